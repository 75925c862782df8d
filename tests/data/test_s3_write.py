"""Writing shards to object storage (issue #38 point 7), against moto's S3 server on 127.0.0.1
(tests/helpers/servers.py): the data tools' ShardWriter stages, uploads and size-checks each shard and
publishes a manifest only after every shard it names; the job-array resume rule (part_done,
merge_parts) works on s3:// as on disk; a writer that raises or is killed leaves no manifest."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from megaspeech.config.prep import DataPrepConfig, TextPrepConfig
from megaspeech.data.prep_text import prepare_text
from megaspeech.data.shards import Dataset, ShardError, ShardWriter, merge_parts, part_done, part_writer
from megaspeech.vocab import Vocab
from tests.helpers.servers import BUCKET, s3  # noqa: F401  (s3: the module's moto server fixture)
from tests.helpers.synth_data import DEMO

ROOT = Path(__file__).resolve().parents[2]
TEXTS = {f"doc{i}": f"Document {i}. " + "It was the best of times, it was the worst of times. " * (i + 2)
         for i in range(7)}


@pytest.fixture
def store(s3, monkeypatch):  # noqa: F811
    """The S3 client of the tools: the usual AWS environment variables, pointing at the moto server."""
    import s3fs
    endpoint, opts = s3
    env = {"AWS_ACCESS_KEY_ID": opts["key"], "AWS_SECRET_ACCESS_KEY": opts["secret"],
           "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached client would keep another test's settings
    yield s3fs.S3FileSystem(key=opts["key"], secret=opts["secret"], endpoint_url=endpoint,
                            skip_instance_cache=True), env
    s3fs.S3FileSystem.clear_instance_cache()


def _objects(fs, prefix: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {Path(p).name: fs.cat_file(p) for p in fs.find(f"{BUCKET}/{prefix}")}


def _text_cfg(tmp_path, out: str, worker: int = 0) -> DataPrepConfig:
    src = tmp_path / "txt"
    if not src.exists():
        src.mkdir()
        for name, text in TEXTS.items():
            (src / f"{name}.txt").write_text(text)
    return DataPrepConfig(corpora=[f"files:{src}/*.txt"], text=TextPrepConfig(
        out_dir=out, tokenizer=str(DEMO.parent / "tokenizer"), max_tokens_per_sample=16, parts=3,
        worker=worker, num_workers=2))


def test_prepare_text_to_s3_job_array_same_bytes_as_local(tmp_path, store):
    fs, _ = store
    url = f"s3://{BUCKET}/text"
    prepare_text(_text_cfg(tmp_path, str(tmp_path / "local"), 1), log=lambda *a: None)
    prepare_text(_text_cfg(tmp_path, str(tmp_path / "local"), 0), log=lambda *a: None)
    local = {p.name: p.read_bytes() for p in (tmp_path / "local").iterdir()}

    prepare_text(_text_cfg(tmp_path, url, 1), log=lambda *a: None)  # part 2 only: no dataset manifest
    assert part_done(url, 2) and not part_done(url, 0) and "manifest.json" not in _objects(fs, "text")
    with pytest.raises(ShardError, match=rf"s3://{BUCKET}/text: parts \[0, 1\] not finished"):
        merge_parts(url, 3)
    # a restarted worker skips a finished part: a same-size stand-in for its shard is left alone ...
    shard = f"{BUCKET}/text/part-00002-000000.tar"
    fs.pipe_file(shard, b"\0" * fs.info(shard)["size"])
    prepare_text(_text_cfg(tmp_path, url, 1), log=lambda *a: None)
    assert set(fs.cat_file(shard)) == {0}
    # ... and redoes a part whose shard is not whole (size differs from its part manifest)
    fs.pipe_file(shard, b"\0" * 100)
    assert not part_done(url, 2)
    prepare_text(_text_cfg(tmp_path, url, 0), log=lambda *a: None)  # parts 0, 1; part 2 still broken
    assert "manifest.json" not in _objects(fs, "text")
    prepare_text(_text_cfg(tmp_path, url, 1), log=lambda *a: None)  # redoes part 2, merges
    remote = _objects(fs, "text")
    # the same objects as the local files, byte for byte (no temp file left on either side); vocab.json
    # names the tokenizer by its local path (relative only beside local shards), same layout
    assert sorted(remote) == sorted(local) and len([n for n in local if n.endswith(".tar")]) >= 3
    assert {n: b for n, b in remote.items() if n != "vocab.json"} == {n: b for n, b in local.items()
                                                                     if n != "vocab.json"}
    vocab = Vocab.load(tmp_path / "local" / "vocab.json")
    (tmp_path / "remote_vocab.json").write_bytes(remote["vocab.json"])
    vocab.check_same(Vocab.load(tmp_path / "remote_vocab.json"), "s3 vocab.json")
    # and the reader takes it from there (megaspeech.data.remote): the local dataset's samples
    got, ref = dict(Dataset(url, kind="text")), dict(Dataset(tmp_path / "local", kind="text"))
    assert list(got) == list(ref) and all(np.array_equal(got[k]["tokens"], ref[k]["tokens"]) for k in ref)


def _staging(pid: int | None = None) -> list[Path]:
    """The local staging dirs of the remote writers of process `pid` (default: this one)."""
    return list(Path(tempfile.gettempdir()).glob(f"megaspeech-stage-*-{pid or os.getpid()}-*"))


def _fill(w, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        w.write(f"k{i:04d}", {"tokens": np.arange(i, i + 50) % 300, "doc": f"doc/{i // 3}"})


def test_writer_that_raises_leaves_no_manifest(tmp_path, store):
    fs, _ = store
    url, vocab = f"s3://{BUCKET}/raise", Vocab(text_size=300, speech_size=0)
    with ShardWriter(url, "text", vocab, max_samples=4) as w:
        _fill(w, 10)
    assert {"manifest.json", "shard-000002.tar"} <= set(_objects(fs, "raise"))
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(url, "text", vocab, max_samples=4) as w:  # a rewrite that fails midway
            _fill(w, 9)
            raise RuntimeError("boom")
    # the old manifest went first: the half-rewritten prefix never looks complete; no local staging left
    assert "manifest.json" not in _objects(fs, "raise") and not _staging()


KILLED = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from megaspeech.data.shards import part_writer
    from megaspeech.vocab import Vocab
    w = part_writer(sys.argv[1], "text", Vocab(text_size=300, speech_size=0), 0, max_samples=4)
    for i in range(10):  # shards 0 and 1 complete and uploaded, shard 2 open
        w.write(f"k{i:04d}", {"tokens": np.arange(i, i + 50) % 300, "doc": f"doc/{i // 3}"})
    print(os.getpid(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_killed_writer_leaves_no_part_manifest_and_rerun_completes(tmp_path, store):
    fs, env = store
    url = f"s3://{BUCKET}/killed"
    r = subprocess.run([sys.executable, "-c", KILLED, url], cwd=ROOT, env={**os.environ, **env},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert sorted(_objects(fs, "killed")) == ["part-00000-000000.tar", "part-00000-000001.tar", "vocab.json"]
    assert not part_done(url, 0)
    left = _staging(int(r.stdout))
    assert len(left) == 1 and list(left[0].iterdir())  # the killed writer's staged open shard
    with part_writer(url, "text", Vocab(text_size=300, speech_size=0), 0, max_samples=4) as w:  # the restart
        _fill(w, 10)
    assert part_done(url, 0) and not left[0].exists()  # a new writer removed the dead one's staging
    m = merge_parts(url, 1)
    assert m["samples"] == 10 and [s["name"] for s in m["shards"]][-1] == "part-00000-000002.tar"


def test_upload_errors_name_the_url(tmp_path, store, monkeypatch):
    with pytest.raises(ShardError, match=r"s3://no-such-bucket-x/ds/vocab\.json: upload failed: not found"):
        ShardWriter("s3://no-such-bucket-x/ds", "text", Vocab(text_size=300, speech_size=0))
    import s3fs
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(ShardError, match=rf"s3://{BUCKET}/denied/manifest\.json: delete failed.*credentials"):
        ShardWriter(f"s3://{BUCKET}/denied", "text", None)
    assert not _staging()  # a writer that failed to start left no staging dir


def test_interleaving_job_array_to_s3_same_bytes_as_local(tmp_path, store):
    """make_interleaved's worker (megaspeech.synth.interleave.run_worker) with an s3:// output, split
    over two job-array workers: the same objects as one local worker writes."""
    from megaspeech.data.shards import read_shard
    from megaspeech.data.text import TextTokenizer
    from megaspeech.synth.interleave import InterleaveConfig, run_worker
    from megaspeech.synth.spans import word_start_table
    from tests.helpers.synth_data import ReversibleCodec, write_text_dataset
    fs, _ = store
    tok = TextTokenizer.from_dir(DEMO)
    vocab = Vocab.load(DEMO / "vocab.json")
    vocab.sp_model = str(tok.path)
    docs = list(read_shard(DEMO / "part-00000-000000.tar", "text"))[:8]
    src = write_text_dataset(tmp_path / "text", docs, vocab, per_shard=3)  # 3 shards
    cfg = InterleaveConfig(eta=0.25, seed=3, docs_per_batch=4, shards_per_part=1)  # 3 parts
    table, url = word_start_table(tok.sp), f"s3://{BUCKET}/interleaved"
    run_worker(src, tmp_path / "local", ReversibleCodec(), vocab, table, cfg)
    a = run_worker(src, url, ReversibleCodec(), vocab, table, cfg, worker=1, workers=2)
    b = run_worker(src, url, ReversibleCodec(), vocab, table, cfg, worker=0, workers=2)
    assert "merged" not in a and b["merged"]
    assert _objects(fs, "interleaved") == {p.name: p.read_bytes() for p in (tmp_path / "local").iterdir()}
