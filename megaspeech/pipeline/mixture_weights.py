"""GLM-4-Voice mixture weights from the run's token budget (arXiv 2411.17607: 30% text, one epoch each
of unsupervised speech and of supervised pairs, the rest interleaved).

Weights divide tokens (data.mix_unit=tokens). A source meant to be seen once gets weight
tokens(source) / budget, so over the run it is drawn about once (and `epochs: 1` stops it after one
pass either way); text keeps its share; interleaved data takes what is left. The paper's 1T-token run
spends 300B on text and 600B on interleaved data, so its one epoch of speech is ~10% of the budget:
when the speech sources hold more than `speech_share_max` of the budget (any run much smaller than
the paper's), they are scaled down together to that share (then they are not seen completely:
reported as expected_epochs < 1), so that interleaved data keeps the majority the recipe gives it.
"""
from __future__ import annotations


def glm4voice_weights(budget_tokens: int, text_share: float, once_tokens: dict[str, int],
                      interleaved_scale: float = 1.0, speech_share_max: float = 0.1) -> tuple[dict[str, float], dict]:
    """-> ({"text": w, <once source>: w, ..., "interleaved": w}, info). Weights sum to 1.
    interleaved_scale multiplies the interleaved weight before normalising: 0 drops interleaved data
    (text and speech share its place in their recipe proportions), 2 doubles its odds against them."""
    if budget_tokens <= 0:
        raise ValueError(f"token budget must be > 0, got {budget_tokens}")
    once = {k: v / budget_tokens for k, v in once_tokens.items()}
    room = min(1.0 - text_share, speech_share_max)
    total_once = sum(once.values())
    scale = min(1.0, room / total_once) if total_once > 0 else 1.0
    w = {"text": text_share, **{k: v * scale for k, v in once.items()}}
    inter = max(0.0, 1.0 - sum(w.values())) * interleaved_scale
    if inter > 1e-9:
        w["interleaved"] = inter
    if interleaved_scale != 1.0:  # the recipe's weights already sum to 1
        total = sum(w.values())
        w = {k: v / total for k, v in w.items()}
    # expected passes over each once-source in the budget (the `epochs: 1` limit caps them at 1)
    info = {"budget_tokens": budget_tokens, "once_tokens": dict(once_tokens),
            "expected_epochs": {k: w[k] * budget_tokens / v for k, v in once_tokens.items() if v}}
    return w, info
