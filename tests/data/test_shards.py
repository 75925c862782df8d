"""Shard writer/reader/manifest: round trip, atomicity, pickle refusal, start-time validation."""
import hashlib
import io
import json
import pickle
import tarfile

import numpy as np
import pytest
import webdataset as wds

from megaspeech.data.shards import (ShardError, ShardWriter, merge_parts, open_dataset, part_done,
                                    part_writer, parts_for_worker, read_shard)
from megaspeech.vocab import Vocab, VocabMismatch

V = Vocab(text_size=1000, speech_size=512)


def _speech(i, with_text):
    s = {"codes": (np.arange(20 + i) * 7 % 512).astype(np.int64), "duration": 0.08 * (20 + i), "source": f"spk{i % 3}",
         "doc": f"generated/u{i:03d}"}
    if with_text:
        s["text"] = np.arange(i + 1, dtype=np.int32) % 1000
    return s


def test_roundtrip_all_kinds_and_manifest(tmp_path):
    rng = np.random.default_rng(0)
    written = {}
    with ShardWriter(tmp_path / "sp", "speech", V, max_bytes=30000, meta={"model": "tok-v1"}) as w:
        for i in range(30):
            written[f"u{i:03d}"] = _speech(i, i % 2 == 0)
            w.write(f"u{i:03d}", written[f"u{i:03d}"])
    ds = open_dataset(tmp_path / "sp", V, kind="speech")
    assert len(ds.shards) > 2 and all(s["bytes"] <= 30000 for s in ds.shards[:-1])
    got = dict(iter(ds))
    assert list(got) == list(written)
    for k, s in written.items():
        np.testing.assert_array_equal(got[k]["codes"], s["codes"])
        assert got[k]["codes"].dtype == np.uint16  # vocab fits 16 bits
        assert ("text" in got[k]) == ("text" in s) and got[k]["duration"] == s["duration"]
    m = json.loads((tmp_path / "sp" / "manifest.json").read_text())
    assert m["meta"] == {"model": "tok-v1"} and m["vocab"] == V.layout()
    assert m["samples"] == 30 and m["tokens"] == sum(len(s["codes"]) + len(s.get("text", [])) for s in written.values())
    for s in m["shards"]:  # checksums and sizes are those of the bytes on disk
        data = (tmp_path / "sp" / s["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]
    assert Vocab.load(tmp_path / "sp" / "vocab.json").layout() == V.layout()
    # plain webdataset reads the same tars
    first = next(iter(wds.WebDataset(str(tmp_path / "sp" / m["shards"][0]["name"]), shardshuffle=False).decode()))
    np.testing.assert_array_equal(first["codes.npy"], written["u000"]["codes"])

    toks = rng.integers(0, V.size, 50)
    mod = V.is_speech(toks).astype(np.uint8)
    with ShardWriter(tmp_path / "il", "interleaved", V) as w:
        w.write("a", {"tokens": toks, "modality": mod, "doc": "generated/a"})
    (k, s), = read_shard(tmp_path / "il" / "shard-000000.tar", "interleaved")
    np.testing.assert_array_equal(s["tokens"], toks)
    np.testing.assert_array_equal(s["modality"], mod)
    with pytest.raises(ShardError, match="modality"):
        with ShardWriter(tmp_path / "bad", "interleaved", V) as w:
            w.write("a", {"tokens": toks, "modality": mod[:-1], "doc": "generated/a"})
    assert not (tmp_path / "bad" / "manifest.json").exists()


def test_crash_mid_write_leaves_nothing_complete(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, "text", V, max_samples=4) as w:
            for i in range(10):
                w.write(f"d{i}", {"tokens": np.arange(5), "doc": f"generated/d{i}"})
            raise RuntimeError("killed")
    assert not (tmp_path / "manifest.json").exists()
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ShardError, match="not a finished dataset"):
        open_dataset(tmp_path, V)


def _tar_with(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_pickle_payloads_refused(tmp_path):
    ok = io.BytesIO()
    np.save(ok, np.arange(4))
    _tar_with(tmp_path / "a.tar", [("x.tokens.npy", ok.getvalue()), ("x.meta.pyd", pickle.dumps({"a": 1}))])
    with pytest.raises(ShardError, match=r"a\.tar key 'x' field 'meta\.pyd'.*pickle"):
        list(read_shard(tmp_path / "a.tar"))
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _tar_with(tmp_path / "b.tar", [("y.tokens.npy", obj.getvalue())])
    with pytest.raises(ShardError, match=r"b\.tar key 'y' field 'tokens\.npy'.*object array"):
        list(read_shard(tmp_path / "b.tar"))
    with pytest.raises(ShardError, match="pickle"):
        with ShardWriter(tmp_path / "w", "text", V) as w:
            w.write("z", {"tokens": np.arange(3), "extra.pth": b"\x80\x04", "doc": "generated/z"})


def test_foreign_tars_with_long_names_and_rewrites(tmp_path):
    key = "k" * 120  # longer than a ustar name field: tarfile writes a pax header (other code path)
    buf = io.BytesIO()
    np.save(buf, np.arange(7, dtype=np.int32))
    _tar_with(tmp_path / "long.tar", [(f"{key}.tokens.npy", buf.getvalue()), (f"{key}.source.txt", b"web")])
    (k, s), = read_shard(tmp_path / "long.tar", "text")
    assert k == key and s["source"] == "web"
    np.testing.assert_array_equal(s["tokens"], np.arange(7))
    with ShardWriter(tmp_path / "d", "text", V) as w:
        w.write("a", {"tokens": np.arange(3), "doc": "generated/a"})
    w2 = ShardWriter(tmp_path / "d", "text", V)  # rewriting: the old manifest goes first
    assert not (tmp_path / "d" / "manifest.json").exists()
    w2.abort()


def test_missing_shard_and_vocab_mismatch_fail_at_start(tmp_path):
    with ShardWriter(tmp_path, "text", V, max_samples=2) as w:
        for i in range(6):
            w.write(f"d{i}", {"tokens": np.arange(3 + i), "doc": f"generated/d{i}"})
    open_dataset(tmp_path, V)
    with pytest.raises(VocabMismatch, match="vocab.text_size"):
        open_dataset(tmp_path, Vocab(text_size=999, speech_size=512))
    (tmp_path / "shard-000001.tar").unlink()
    with pytest.raises(ShardError, match=r"shard-000001\.tar: listed in .*manifest\.json but missing"):
        open_dataset(tmp_path, V)


def test_job_array_resume_rule(tmp_path):
    assert [list(parts_for_worker(7, w, 3)) for w in range(3)] == [[0, 1, 2], [3, 4, 5], [6]]
    for part in (0, 2):
        with part_writer(tmp_path, "text", V, part) as w:
            w.write(f"p{part}", {"tokens": np.arange(4) + part, "doc": f"generated/p{part}"})
    assert part_done(tmp_path, 0) and not part_done(tmp_path, 1) and part_done(tmp_path, 2)
    with pytest.raises(ShardError, match=r"parts \[1\] not finished"):
        merge_parts(tmp_path, 3)
    with part_writer(tmp_path, "text", V, 1) as w:
        w.write("p1", {"tokens": np.arange(4) + 1, "doc": "generated/p1"})
    m = merge_parts(tmp_path, 3)
    assert [s["name"] for s in m["shards"]] == [f"part-0000{i}-000000.tar" for i in range(3)]
    assert [k for k, _ in open_dataset(tmp_path, V)] == ["p0", "p1", "p2"]
