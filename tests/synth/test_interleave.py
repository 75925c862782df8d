"""Acceptance 1: span sampler ratio and word alignment, interleaved round trip, 2 workers == 1."""
from __future__ import annotations

import hashlib

import numpy as np

from megaspeech.data.shards import Dataset, open_dataset, part_done
from megaspeech.synth.interleave import InterleaveConfig, run_worker, split_interleaved
from megaspeech.synth.spans import doc_rng, sample_spans, word_bounds
from megaspeech.vocab import Vocab
from tests.helpers.synth_data import DEMO, ReversibleCodec, write_text_dataset


def _vocab(demo_tok) -> Vocab:
    v = Vocab.load(DEMO / "vocab.json")
    v.sp_model = str(demo_tok.path)
    return v


def test_sampler_hits_eta_and_never_splits_a_word(demo_docs, starts_word):
    for eta in (0.2, 0.3, 0.4):
        total = conv = 0
        lengths = []
        for key, s in demo_docs[:40]:  # real text, ~30k words
            tok = s["tokens"]
            bounds = word_bounds(tok, starts_word)
            n = len(bounds) - 1
            spans = sample_spans(n, eta, 10.0, doc_rng(7, key))
            for (a, b), nxt in zip(spans, spans[1:] + [(n + 1, n + 1)]):
                assert 0 <= a < b <= n and nxt[0] > b, "spans must be sorted, disjoint and non-adjacent"
                ta, tb = bounds[a], bounds[b]
                # a span starts on a word-opening piece and ends right before one (or at the end)
                assert a == 0 or starts_word[tok[ta]]
                assert tb == len(tok) or starts_word[tok[tb]]
                lengths.append(b - a)
            total += n
            conv += sum(b - a for a, b in spans)
        assert total >= 10_000
        assert abs(conv / total - eta) < 0.02, (eta, conv / total)
        assert 7.0 < np.mean(lengths) <= 10.5, np.mean(lengths)  # 1 + Poisson(9), last span cut


def test_sampler_edge_cases():
    rng = np.random.default_rng(0)
    assert sample_spans(10, 0.0, 10, rng) == []
    assert sample_spans(10, 1.0, 10, rng) == [(0, 10)]
    for n in range(1, 40):  # few text words: spans merge so that they never touch
        spans = sample_spans(n, 0.9, 2.0, rng)
        assert sum(b - a for a, b in spans) == round(0.9 * n)
        assert all(s2[0] > s1[1] for s1, s2 in zip(spans, spans[1:]))


def test_round_trip_reproduces_document_order(tmp_path, demo_docs, demo_tok, starts_word):
    vocab = _vocab(demo_tok)
    src = write_text_dataset(tmp_path / "text", demo_docs[:12], vocab, per_shard=6)
    out = tmp_path / "inter"
    cfg = InterleaveConfig(eta=0.3, span_mean=6, seed=1, docs_per_batch=5)
    codec = ReversibleCodec()
    stats = run_worker(src, out, codec, vocab, starts_word, cfg)
    assert stats["merged"] and stats["docs"] == 12 and codec.calls  # batched: several spans per call
    assert max(codec.calls) > 5
    ds = open_dataset(out, vocab, kind="interleaved")
    assert ds.manifest["meta"]["eta"] == 0.3 and ds.manifest["meta"]["text_to_token"] == codec.version
    originals = dict(demo_docs[:12])
    n_speech_words = n_words = 0
    for key, s in ds:
        parts = split_interleaved(s["tokens"], vocab)
        rebuilt = np.concatenate([p if kind == "text" else ReversibleCodec.decode(p) for kind, p in parts])
        np.testing.assert_array_equal(rebuilt, originals[key]["tokens"])
        assert s["doc"] == originals[key]["source"]  # provenance: the text sample's document
        # modality: 1 exactly on speech spans with their markers
        is_speech = np.zeros(len(s["tokens"]), np.uint8)
        inside = False
        for i, t in enumerate(s["tokens"]):
            if t == vocab.bos_speech_id:
                inside = True
            is_speech[i] = inside
            if t == vocab.eos_speech_id:
                inside = False
        np.testing.assert_array_equal(s["modality"], is_speech)
        spans = s["spans"].reshape(-1, 2)
        speech = [p for kind, p in parts if kind == "speech"]
        assert len(spans) == len(speech)
        for (a, b), codes in zip(spans, speech):
            np.testing.assert_array_equal(ReversibleCodec.decode(codes), originals[key]["tokens"][a:b])
            n_speech_words += len(word_bounds(originals[key]["tokens"][a:b], starts_word)) - 1
        n_words += len(word_bounds(originals[key]["tokens"], starts_word)) - 1
    assert abs(n_speech_words / n_words - 0.3) < 0.02


def _files(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def test_two_workers_write_the_same_bytes_as_one_and_resume_skips(tmp_path, demo_docs, demo_tok, starts_word):
    vocab = _vocab(demo_tok)
    src = write_text_dataset(tmp_path / "text", demo_docs[:14], vocab, per_shard=3)  # 5 shards
    cfg = InterleaveConfig(eta=0.25, seed=3, docs_per_batch=4, shards_per_part=2)  # 3 parts
    one, two = tmp_path / "one", tmp_path / "two"
    s1 = run_worker(src, one, ReversibleCodec(), vocab, starts_word, cfg)
    assert s1["parts_done"] == 3 and s1["merged"]
    a = run_worker(src, two, ReversibleCodec(), vocab, starts_word, cfg, worker=1, workers=2)
    assert a["parts_done"] == 1 and "merged" not in a  # part 0 and 1 belong to worker 0
    b = run_worker(src, two, ReversibleCodec(), vocab, starts_word, cfg, worker=0, workers=2)
    assert b["parts_done"] == 2 and b["merged"]
    assert _files(one) == _files(two)
    assert Dataset(two, vocab).num_samples == 14

    # resume: a lost part is redone (same bytes), finished parts are skipped untouched
    (one / "part-00001.manifest.json").unlink()
    (one / "manifest.json").unlink()
    mtimes = {p.name: p.stat().st_mtime_ns for p in one.glob("part-00000*")}
    r = run_worker(src, one, ReversibleCodec(), vocab, starts_word, cfg)
    assert (r["parts_done"], r["parts_skipped"]) == (1, 2) and part_done(one, 1)
    assert {p.name: p.stat().st_mtime_ns for p in one.glob("part-00000*")} == mtimes
    assert _files(one) == _files(two)
