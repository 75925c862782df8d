"""Tokenizer training, text shard preparation (with the job-array resume rule), the demo data."""
import json
from pathlib import Path

import numpy as np
import torch

from megaspeech.config.data import DataConfig, SourceConfig
from megaspeech.config.load import load_config
from megaspeech.config.prep import DataPrepConfig
from megaspeech.data.loader import build_train_loader
from megaspeech.data.prep_text import prepare_text, train_sentencepiece
from megaspeech.data.shards import open_dataset
from megaspeech.data.text import TextTokenizer
from megaspeech.vocab import Vocab

ROOT = Path(__file__).resolve().parents[2]


def _prep_config(overrides: list[str]) -> DataPrepConfig:
    return load_config(DataPrepConfig, ROOT / "configs/data/demo.yaml", overrides)

DOCS = {
    "a": "It was the best of times, it was the worst of times, it was the age of wisdom.\n" * 3,
    "b": "Call me Ishmael. Some years ago, never mind how long precisely, having little money.\n" * 2,
    "c": "In the beginning God created the heaven and the earth. And the earth was without form.\n" * 4,
}


def _corpus(tmp_path):
    for name, text in DOCS.items():
        (tmp_path / f"{name}.txt").write_text(text)
    return f"files:{tmp_path}/*.txt"


def test_train_tokenizer_writes_model_and_vocab(tmp_path):
    corpus = _corpus(tmp_path)
    train_sentencepiece(_prep_config([f"corpora=[\"{corpus}\"]", f"tokenizer.out_dir={tmp_path}/tok",
                                      "tokenizer.vocab_size=300", "tokenizer.speech_size=64"]))
    vocab = Vocab.load(tmp_path / "tok" / "vocab.json")
    assert (vocab.text_size, vocab.speech_size) == (300, 64)
    # stored relative to vocab.json, resolved against its dir on load
    assert json.loads((tmp_path / "tok" / "vocab.json").read_text())["sp_model"] == "tokenizer.model"
    assert vocab.sp_model == str(tmp_path / "tok" / "tokenizer.model")
    tok = TextTokenizer.from_dir(tmp_path / "tok")
    ids = tok.encode(DOCS["b"].splitlines()[0])
    assert ids.dtype == np.int32 and 0 <= ids.min() and ids.max() < 300
    assert tok.decode(ids) == DOCS["b"].splitlines()[0]


def test_prepare_text_parts_resume_and_round_trip(tmp_path):
    corpus = _corpus(tmp_path)
    out = tmp_path / "shards"
    args = [f"corpora=[\"{corpus}\"]",
            f"text.out_dir={out}", f"text.tokenizer={ROOT}/megaspeech/demo/tokenizer", "text.max_tokens=null",
            "text.max_tokens_per_sample=16", "text.parts=3", "text.num_workers=2"]
    prepare_text(_prep_config(args + ["text.worker=1"]))  # part 2 only: no dataset manifest yet
    assert not (out / "manifest.json").exists() and (out / "part-00002.manifest.json").exists()
    done = (out / "part-00002-000000.tar").stat().st_mtime_ns
    prepare_text(_prep_config(args + ["text.worker=0"]))  # parts 0, 1; now every part is finished
    prepare_text(_prep_config(args + ["text.worker=1"]))  # re-run: part 2 is skipped, not rewritten
    assert (out / "part-00002-000000.tar").stat().st_mtime_ns == done
    tok = TextTokenizer.from_dir(out)  # vocab.json beside the shards finds the model
    ds = open_dataset(out, tok.vocab, kind="text")
    docs = {}
    for key, s in ds:
        assert len(s["tokens"]) <= 16
        docs.setdefault(s["source"], []).append(s["tokens"])
    assert sorted(docs) == ["files/a", "files/b", "files/c"]
    for name, chunks in docs.items():
        text = tok.decode(np.concatenate(chunks))
        assert text == " ".join(DOCS[name.split("/")[1]].split())  # SentencePiece folds whitespace
    m = json.loads((out / "manifest.json").read_text())
    assert m["tokens"] == sum(len(c) for cs in docs.values() for c in cs)


def test_demo_data_is_real_text_and_trains_the_loader():
    demo = ROOT / "megaspeech" / "demo" / "text"
    tok = TextTokenizer.from_dir(demo)
    assert tok.vocab.text_size == 4096 and tok.vocab.layout() == Vocab.load(demo.parent / "tokenizer" / "vocab.json").layout()
    ds = open_dataset(demo, tok.vocab, kind="text")
    sources = {s["source"].split("/")[0] for _, s in ds}  # reads every shard, checksums verified
    assert sources == {"sotu", "kjv", "shakespeare"}
    key, first = next(iter(ds))
    assert tok.decode(first["tokens"]).startswith("Fellow-Citizens of the Senate and House of Representatives")
    cfg = DataConfig(kind="shards", sources=[SourceConfig(name="text", path="megaspeech:demo/text")])
    batch = next(iter(build_train_loader(cfg, tok.vocab, seq_len=64, micro_batch=2, dp_rank=0, dp_size=1, seed=0)))
    assert batch["input_ids"].shape == (2, 64) and torch.all(batch["loss_mask"] == 1)
    assert int(batch["labels"].max()) < tok.vocab.size and torch.all(batch["modality"] == 0)
