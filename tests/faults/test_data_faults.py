"""Data faults: a source whose every shard is bad fails after one pass instead of spinning, empty
shards are skipped and counted, ids outside a kind's range are refused, a damaged manifest is named,
and running out of data before train.steps saves a checkpoint and stops with a message."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import signal
import tarfile

import numpy as np
import pytest

from megaspeech.config.data import DataConfig, SourceConfig
from megaspeech.data.shards import Dataset, ShardError, ShardWriter, read_shard
from megaspeech.data.stream import ShardLoader
from megaspeech.vocab import Vocab
from tests.helpers.fault_runs import losses, run, tags

V = Vocab(text_size=4096, speech_size=4096)  # tests/helpers/fault_runs.SMALL's


def text_dataset(path, n_shards=3, per_shard=4, length=40):
    rng = np.random.default_rng(0)
    with ShardWriter(path, "text", V, max_samples=per_shard) as w:
        for i in range(n_shards * per_shard):
            w.write(f"d{i:04d}", {"tokens": rng.integers(0, V.text_size, length), "doc": f"generated/d{i:04d}"})
    return path


def loader(path, on_error="raise", epochs=None):
    cfg = DataConfig(kind="shards", sources=[SourceConfig(path=str(path), epochs=epochs)], on_error=on_error,
                     open_shards=2)
    return ShardLoader(cfg, V, seq_len=64, micro_batch=2, dp_rank=0, dp_size=1, seed=0)


@contextlib.contextmanager
def deadline(seconds):
    """A spin (the old behaviour) becomes a test failure instead of a hung suite."""
    def fail(*_):
        raise TimeoutError(f"no result within {seconds} s: the loader spins")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_skip_with_every_shard_bad_fails_after_one_pass(tmp_path):
    d = text_dataset(tmp_path / "t")
    for s in json.loads((d / "manifest.json").read_text())["shards"]:
        f = d / s["name"]
        b = bytearray(f.read_bytes())
        b[700] ^= 0xFF  # same size, sha256 differs
        f.write_bytes(bytes(b))
    ld = loader(d, on_error="skip")
    with deadline(30), pytest.raises(ShardError, match=r"a full pass over its 3\) yielded no usable sample"):
        next(iter(ld))
    assert ld.stats()["data/skipped_shards"] == 3


def test_skip_with_every_sample_bad_fails_after_one_pass(tmp_path):
    """Shards that load but hold only out-of-range samples: the same bounded failure."""
    with ShardWriter(tmp_path / "t", "text", None, max_samples=2) as w:  # no vocab: no write-time check
        for i in range(4):
            w.write(f"d{i}", {"tokens": np.full(30, V.text_size + 5), "doc": f"generated/d{i}"})
    m = json.loads((tmp_path / "t" / "manifest.json").read_text())
    m["vocab"] = V.layout()
    (tmp_path / "t" / "manifest.json").write_text(json.dumps(m))
    with deadline(30), pytest.raises(ShardError, match="yielded no usable sample"):
        next(iter(loader(tmp_path / "t", on_error="skip")))


def _append_empty_shard(d):
    buf = io.BytesIO()
    tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT).close()
    data = buf.getvalue()
    (d / "empty-000000.tar").write_bytes(data)
    m = json.loads((d / "manifest.json").read_text())
    m["shards"].insert(1, {"name": "empty-000000.tar", "samples": 0, "tokens": 0, "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()})
    (d / "manifest.json").write_text(json.dumps(m))


def test_empty_shard_is_skipped_and_counted(tmp_path):
    d = text_dataset(tmp_path / "t", n_shards=2)
    _append_empty_shard(d)
    ld = loader(d, epochs=1)
    with deadline(60):
        batches = list(ld)
    ids = {int(i) for b in batches for i in b["sample_ids"].flatten() if i >= 0}
    assert len(ids) == 8  # every sample of the two real shards, once
    assert ld.stats()["data/skipped_shards"] == 1 and ld.stats()["data/samples"] == 8


def test_only_empty_shards_fail_clearly(tmp_path):
    d = text_dataset(tmp_path / "t", n_shards=1)
    m = json.loads((d / "manifest.json").read_text())
    (d / m["shards"][0]["name"]).unlink()
    m["shards"] = []
    (d / "manifest.json").write_text(json.dumps(m))
    _append_empty_shard(d)
    with deadline(30), pytest.raises(ShardError, match="yielded no usable sample"):
        next(iter(loader(d)))


@pytest.mark.parametrize("kind,sample,msg", [
    ("text", {"tokens": np.array([1, 2, V.speech_offset + 3])}, "vocab.text_size=4096"),  # a speech code
    ("text", {"tokens": np.array([1, V.eos_id])}, "vocab.text_size=4096"),  # a special
    ("speech", {"codes": np.array([1, V.speech_size])}, f"speech_size={V.speech_size}"),
    ("speech", {"codes": np.array([1]), "text": np.array([V.text_size])}, "vocab.text_size=4096"),
    ("interleaved", {"tokens": np.array([1, V.size]), "modality": np.array([0, 0], np.uint8)}, "vocabulary size"),
    ("interleaved", {"tokens": np.array([1, 2]), "modality": np.array([0, 2], np.uint8)}, "modality' has value 2"),
])
def test_ids_outside_the_kind_range_are_refused_on_write_and_read(tmp_path, kind, sample, msg):
    with pytest.raises(ShardError, match=msg):
        with ShardWriter(tmp_path / "w", kind, V) as w:
            w.write("a", {**sample, "doc": "generated/a"})
    if "modality" in msg:  # vocab-independent: even a writer without a vocab refuses it
        return
    with ShardWriter(tmp_path / "r", kind, None) as w:  # a writer without the vocab cannot check ids
        w.write("a", {**sample, "doc": "generated/a"})
    with pytest.raises(ShardError, match=f"shard-000000.tar key 'a'.*{msg}"):
        list(read_shard(tmp_path / "r" / "shard-000000.tar", kind, vocab=V))


def test_damaged_manifest_is_named(tmp_path):
    d = text_dataset(tmp_path / "t", n_shards=1)
    (d / "manifest.json").write_text('{"format": "megaspeech-shards/1", "shards": [')
    with pytest.raises(ShardError, match=f"{d / 'manifest.json'}: not valid JSON"):
        Dataset(d, V)


def test_running_out_of_data_saves_and_stops(tmp_path):
    """One epoch of ~1,400 tokens lasts 2-3 steps of 512: the run saves and stops there, exit 0."""
    d = text_dataset(tmp_path / "t", n_shards=4, per_shard=9, length=40)
    run_dir = tmp_path / "run"
    p = run(run_dir, ["train.steps=50", "checkpoint.interval=0", "data.kind=shards", "data.shuffle=false",
                      f"data.sources=[{{name: t, path: '{d}', epochs: 1}}]"])
    assert p.returncode == 0, p.stderr[-3000:]
    steps = [s for s, _ in losses(run_dir)]
    n = steps[-1]
    assert 1 <= n < 50 and steps == list(range(1, n + 1))
    assert f"data exhausted after step {n} of train.steps=50" in p.stderr
    assert tags(run_dir) == [f"step{n:08d}"]
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step{n:08d}"
