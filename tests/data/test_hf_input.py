"""Text from Hugging Face `datasets` data (issue #38 point 6): parquet, JSON-lines and a save_to_disk
directory give the same text shards (tokens, word starts, keys) as the same documents read as plain
files through `files:`, in both tokenizer kinds; every sample names its document (`doc`); bad input is
an error naming the file or column and the fix."""
from __future__ import annotations

import json

import numpy as np
import pytest

from megaspeech.config.prep import DataPrepConfig, TextPrepConfig
from megaspeech.data.corpora import iter_corpus
from megaspeech.data.prep_text import prepare_text
from megaspeech.data.shards import Dataset
from tests.helpers.synth_data import DEMO

TEXTS = [
    "It was the best of times, it was the worst of times, it was the age of wisdom. " * 3,
    "Call me Ishmael. Some years ago, never mind how long precisely, having little money.",
    "In the beginning God created the heaven and the earth. And the earth was without form. " * 4,
    "Four score and seven years ago our fathers brought forth on this continent a new nation — wörld €100.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune.",
]
IDS = [f"url-{i}" for i in range(len(TEXTS))]


def _prep(tmp_path, name: str, corpus: str, tokenizer: str, speech_size=None) -> dict[str, dict]:
    cfg = DataPrepConfig(corpora=[corpus], text=TextPrepConfig(
        out_dir=str(tmp_path / name), tokenizer=tokenizer, speech_size=speech_size, max_tokens_per_sample=16))
    prepare_text(cfg, log=lambda *a: None)
    return dict(Dataset(tmp_path / name, kind="text"))


def _inputs(tmp_path) -> dict[str, str]:
    """The same five documents as text files, parquet (with a null row that is skipped), JSON lines
    and a saved dataset; column `content`, ids in `uid`."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    (tmp_path / "txt").mkdir()
    for i, t in enumerate(TEXTS):
        (tmp_path / "txt" / f"doc{i}.txt").write_text(t)
    rows = [{"content": t, "uid": u} for t, u in zip(TEXTS, IDS)]
    # two parquet files (documents 0-1 in a.parquet, 2-4 in b.parquet) and a null text row in b
    pq.write_table(pa.Table.from_pylist(rows[:2]), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pylist([rows[2], {"content": None, "uid": "empty"}, *rows[3:]]),
                   tmp_path / "b.parquet")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    return {"files": f"files:{tmp_path}/txt/*.txt",
            "parquet": f"parquet:{tmp_path}/*.parquet;text=content",
            "jsonl": f"jsonl:{tmp_path}/c.jsonl;text=content;id=uid",
            "hf_disk": f"hf_disk:{tmp_path}/saved;text=content;split=train"}


def _same_shards(got: dict, ref: dict) -> None:
    assert list(got) == list(ref) and len(ref) > len(TEXTS)  # same keys in the same order, documents split
    for k in ref:
        np.testing.assert_array_equal(got[k]["tokens"], ref[k]["tokens"])
        np.testing.assert_array_equal(got[k]["words"], ref[k]["words"])


def _docs(ds: dict) -> list[str]:
    return list(dict.fromkeys(s["doc"] for s in ds.values()))


def test_parquet_jsonl_saved_dir_give_the_files_tokens(tmp_path):
    specs = _inputs(tmp_path)
    tok = str(DEMO.parent / "tokenizer")  # SentencePiece
    ref = _prep(tmp_path, "ref", specs["files"], tok)
    assert _docs(ref) == [f"files/doc{i}" for i in range(len(TEXTS))]
    got = {kind: _prep(tmp_path, kind, specs[kind], tok) for kind in ("parquet", "jsonl", "hf_disk")}
    for ds in got.values():
        _same_shards(ds, ref)
    # provenance: the id column, else <file stem or directory>/<row in it> (the null row keeps its number)
    assert _docs(got["jsonl"]) == IDS
    assert _docs(got["parquet"]) == ["a/0", "a/1", "b/0", "b/2", "b/3"]
    assert _docs(got["hf_disk"]) == [f"saved/{i}" for i in range(len(TEXTS))]


def test_hf_tokenizer_from_parquet(tmp_path):
    from megaspeech.model.smollm2 import smollm2_dir
    specs = _inputs(tmp_path)
    tok = str(smollm2_dir())  # the Hugging Face tokenizer of SmolLM2-135M
    ref = _prep(tmp_path, "ref", specs["files"], tok, speech_size=1024)
    _same_shards(_prep(tmp_path, "pq", specs["parquet"], tok, speech_size=1024), ref)


def test_bad_hf_input_names_file_column_and_fix(tmp_path):
    specs = _inputs(tmp_path)
    with pytest.raises(ValueError, match=r"c\.jsonl: no column 'body' .*content, uid.*;text=COLUMN"):
        list(iter_corpus(f"jsonl:{tmp_path}/c.jsonl;text=body"))
    with pytest.raises(ValueError, match=r"a\.parquet: no column 'url' .*;id=COLUMN"):
        list(iter_corpus(specs["parquet"] + ";id=url"))
    with pytest.raises(RuntimeError, match=r"'parquet:.*/nothing/\*\.parquet' matched no file"):
        list(iter_corpus(f"parquet:{tmp_path}/nothing/*.parquet"))
    with pytest.raises(ValueError, match=r"no split 'test' \(splits: train\).*;split=NAME"):
        list(iter_corpus(f"hf_disk:{tmp_path}/saved;split=test"))
    with pytest.raises(RuntimeError, match=r"not a directory written by save_to_disk.*parquet:GLOB"):
        list(iter_corpus(f"hf_disk:{tmp_path}/txt"))
    with pytest.raises(ValueError, match=r"bad option 'column=x'.*text=NAME"):
        iter_corpus(f"jsonl:{tmp_path}/c.jsonl;column=x")
    with pytest.raises(Exception, match=r"corpora.*unknown corpus 'parket:x'"):
        DataPrepConfig(corpora=["parket:x"])
