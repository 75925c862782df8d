"""Word boundaries from tokenizer offsets, for both tokenizer kinds (SentencePiece and the Hugging Face
tokenizer of SmolLM2-135M), and the vocab.json path rule."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from megaspeech.data.text import TextTokenizer, hf_vocab
from megaspeech.synth.spans import word_bounds, word_start_table
from megaspeech.vocab import Vocab, VocabMismatch
from tests.helpers.synth_data import DEMO

TEXT = ("Four score and seven years ago,\nour fathers brought forth   on this continent\tа new nation — "
        "conceived in Liberty (1776), wörld's €100 “quotes”.\n\nThe end")


def _words_of(tok: TextTokenizer, text: str) -> list[str]:
    ids, starts = tok.encode_words(text)
    b = word_bounds(ids, None, np.flatnonzero(starts))
    return [tok.decode(ids[b[i]:b[i + 1]]).strip() for i in range(len(b) - 1)]


@pytest.fixture(scope="module")
def sp_tok():
    return TextTokenizer.from_dir(DEMO.parent / "tokenizer")


@pytest.fixture(scope="module")
def hf_tok():
    from megaspeech.model.smollm2 import smollm2_dir
    return TextTokenizer(hf_vocab(smollm2_dir(), speech_size=1024))


@pytest.mark.parametrize("kind", ["sp", "hf"])
def test_words_from_offsets_are_the_whitespace_words(kind, request):
    tok = request.getfixturevalue(f"{kind}_tok")
    # every word (whitespace-separated) is exactly one run of tokens: no word split, none merged,
    # multi-byte characters (byte fallback / byte-level BPE) never cut
    assert _words_of(tok, TEXT) == TEXT.split()


def test_hf_words_after_newline_need_offsets(hf_tok):
    # byte-level BPE marks a word by a leading "Ġ" only after a space: after a newline the word
    # "our" has no marker, so a piece table would glue it to the previous word; offsets do not
    ids, starts = hf_tok.encode_words(TEXT)
    pieces = [hf_tok.hf.id_to_token(int(i)) for i in ids]
    by_marker = np.array([p.startswith("Ġ") for p in pieces])
    by_marker[0] = True
    assert by_marker.sum() < len(TEXT.split()) == starts.sum()


def test_sp_offsets_agree_with_piece_table_on_plain_text(sp_tok):
    text = "the quick brown fox jumps over the lazy dog again and again"
    ids, starts = sp_tok.encode_words(text)
    np.testing.assert_array_equal(word_bounds(ids, word_start_table(sp_tok.sp)),
                                  word_bounds(ids, None, np.flatnonzero(starts)))


def test_text_shards_store_words_for_hf_tokenizer(tmp_path, hf_tok):
    from megaspeech.config.prep import DataPrepConfig, TextPrepConfig
    from megaspeech.data.prep_text import prepare_text
    from megaspeech.data.shards import Dataset
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "a.txt").write_text(TEXT)
    (src / "b.txt").write_text("In the beginning\nGod created the heaven and the earth. " * 30)
    cfg = DataPrepConfig(corpora=[f"files:{src}/*.txt"], text=TextPrepConfig(
        out_dir=str(tmp_path / "text"), tokenizer=str(hf_tok.path), speech_size=1024, max_tokens_per_sample=64))
    m = prepare_text(cfg, log=lambda *a: None)
    assert m["samples"] > 2
    vocab = Vocab.load(tmp_path / "text" / "vocab.json")
    assert vocab.text_size == 49152 and vocab.hf_tokenizer == str(hf_tok.path.resolve()) and vocab.sp_model is None
    raw = json.loads((tmp_path / "text" / "vocab.json").read_text())
    assert not raw["hf_tokenizer"].startswith("/")  # stored relative to the data dir
    tok = TextTokenizer.from_dir(tmp_path / "text")
    docs = {}
    for key, s in Dataset(tmp_path / "text", vocab, kind="text"):
        assert s["tokens"].max() < 49152 and s["words"][0] == 0
        docs.setdefault(key.split("_")[0], []).append(s)
    whole = [np.concatenate([s["tokens"] for s in parts]) for parts in docs.values()]
    assert sorted(tok.decode(t) for t in whole) == sorted([TEXT, (src / "b.txt").read_text()])
    for parts in docs.values():  # stored words reproduce the whitespace words of each chunk
        for s in parts:
            b = word_bounds(s["tokens"], None, s["words"])
            words = [tok.decode(s["tokens"][b[i]:b[i + 1]]).strip() for i in range(len(b) - 1)]
            assert " ".join(words).split() == tok.decode(s["tokens"]).split()


def test_vocab_json_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    d = tmp_path / "deep" / "data"
    (tmp_path / "deep" / "tok").mkdir(parents=True)
    d.mkdir()
    shutil.copy(DEMO.parent / "tokenizer" / "tokenizer.model", tmp_path / "deep" / "tok" / "tokenizer.model")
    Vocab(text_size=4096, speech_size=1024, sp_model="../tok/tokenizer.model").save(d / "vocab.json")
    monkeypatch.chdir(tmp_path)  # not the file's dir: the old rule opened ./../tok/tokenizer.model
    v = Vocab.load("deep/data/vocab.json")
    assert v.sp_model == str(tmp_path / "deep" / "tok" / "tokenizer.model")
    assert TextTokenizer(v).encode("hello world").size > 0


def test_speech_size_mismatch_names_both(tmp_path):
    from megaspeech.speech.tokenizer import check_speech_vocab
    tok = tmp_path / "stok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text(json.dumps({"codebook_size": 4096}))
    check_speech_vocab(4096, "vocab.json", tok)
    with pytest.raises(VocabMismatch, match=r"speech_size=1024.*codebook_size=4096"):
        check_speech_vocab(1024, "data/vocab.json", tok)
    with pytest.raises(VocabMismatch, match="speech_size=4096 but 1024"):
        TextTokenizer.from_dir(DEMO.parent / "tokenizer", speech_size=1024)
