"""Shards streamed from HTTP (nginx), S3 (moto's server) and pipe: (issue #38), against real servers on
127.0.0.1 (tests/helpers/servers.py): the same batches as from disk, exact resume after kill -9 from
S3, a server stopped mid-shard and restarted, 5xx storms and truncated bodies (retried, then a named
error or a counted skip), a shard changed under the run, wrong or missing credentials (a named error
within the timeout), and the bounded within-shard shuffle window."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from megaspeech.data.mixture import within_order
from megaspeech.data.remote import IOSettings, Location, ShardStream
from megaspeech.data.shards import ShardError
from tests.helpers.servers import BUCKET, FaultProxy, free_port, nginx_server, s3, upload_dir  # noqa: F401
from tests.helpers.streams import cfg_for, loaders, make_sources

ROOT = Path(__file__).resolve().parents[2]
FAST = dict(io_timeout_s=5.0, io_retries=3, io_backoff_s=0.02, shuffle_buffer=4)  # 6-sample shards: windowed


def digest(batches) -> list[str]:
    return [hashlib.sha256(b"".join(v.numpy().tobytes() for _, v in sorted(b.items()))).hexdigest()
            for b in batches]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three sources on disk, served by nginx and uploaded to S3; the reference batches from disk."""
    root = tmp_path_factory.mktemp("remote")
    paths = make_sources(root / "d")
    ref = {dp: [digest(ld) for ld in loaders(cfg_for(paths, epochs=1, **FAST), dp)] for dp in (1, 2)}
    with nginx_server(root / "d") as url:
        yield root, paths, url, ref


@pytest.fixture(scope="module")
def s3_cfg(s3, data):  # noqa: F811
    """The sources uploaded to S3 once; a function making their config (data.root=s3://...)."""
    opts = s3[1]
    upload_dir(data[0] / "d", f"s3://{BUCKET}/ds", opts)
    return lambda **kw: cfg_for({k: k for k in data[1]}, epochs=1,
                                **{**FAST, "root": f"s3://{BUCKET}/ds", "storage_options": opts, **kw})


def test_same_batches_from_disk_http_s3_and_pipe(data, s3_cfg):
    root, paths, url, ref = data
    http = cfg_for({k: k for k in paths}, epochs=1, root=url, **FAST)  # data.root=http://... + relative paths
    assert http.sources[0].path == f"{url}/text"
    assert [digest(ld) for ld in loaders(http, 2)] == ref[2]
    assert [digest(ld) for ld in loaders(s3_cfg(), 2)] == ref[2]
    pipe = cfg_for({k: k for k in paths}, epochs=1, root=f"pipe:cat {root}/d/{{}}", **FAST)
    assert [digest(ld) for ld in loaders(pipe, 1)] == ref[1]


KILL_WORKER = textwrap.dedent("""
    import json, os, sys, hashlib, time
    from megaspeech.config.data import DataConfig, SourceConfig
    from tests.helpers.streams import loaders
    from tests.data.test_remote import digest
    cfg = json.loads(sys.argv[1]); out = sys.argv[2]
    cfg["sources"] = [SourceConfig(**s) for s in cfg["sources"]]
    ld = loaders(DataConfig(**cfg), 1)[0]
    for n, b in enumerate(ld, 1):
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"batches": n, "digest": digest([b])[0], "state": ld.state_dict()}, f)
        os.replace(tmp, out)  # the last state saved survives the kill
        time.sleep(0.05)
""")


def test_kill9_resume_from_s3(data, s3_cfg, tmp_path):
    ref = data[3][1][0]
    cfg = s3_cfg()
    spec = {k: v for k, v in vars(cfg).items()}
    spec["sources"] = [vars(s) for s in cfg.sources]
    state = tmp_path / "state.json"
    proc = subprocess.Popen([sys.executable, "-c", KILL_WORKER, json.dumps(spec), str(state)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 60
    while not (state.exists() and json.loads(state.read_text())["batches"] >= 3):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < end, "the worker made no progress"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # mid-run, shards open mid-stream
    proc.wait()
    saved = json.loads(state.read_text())
    n = saved["batches"]
    assert n < len(ref) and saved["digest"] == ref[n - 1]
    ld = loaders(cfg, 1)[0]
    ld.load_state_dict(saved["state"])
    assert digest(ld) == ref[n:]


def test_server_stopped_mid_shard_then_restarted(data):
    root, paths, url, ref = data
    with FaultProxy(url) as proxy:  # several ranged reads per shard: the stop falls inside one
        cfg = cfg_for({k: k for k in paths}, epochs=1, root=proxy.url, **{**FAST, "io_retries": 6,
                                                                          "io_backoff_s": 0.05, "io_chunk_mb": 2048 / 2**20})
        ld = loaders(cfg, 1)[0]
        it = iter(ld)
        got = [next(it)]
        proxy.stop()  # listening socket and open connections gone, reads in flight fail
        threading.Timer(0.6, proxy.start).start()
        got += list(it)
    assert digest(got) == ref[1][0]


def test_5xx_storm_and_truncated_body(data):
    root, paths, url, ref = data
    with FaultProxy(url) as proxy:
        cfg = cfg_for({"text": "text"}, epochs=1, weights=(1.0,), root=proxy.url,
                      **{**FAST, "io_retries": 6, "io_chunk_mb": 4096 / 2**20})
        whole = digest(loaders(cfg_for({"text": paths["text"]}, epochs=1, weights=(1.0,), **FAST), 1)[0])
        ld = loaders(cfg, 1)[0]
        proxy.storm(3, 503)  # fewer than the tries: retried, same batches
        proxy.truncate(2, after_bytes=100)
        assert digest(ld) == whole and proxy.requests > 5
        cfg.io_retries = 3
        ld = loaders(cfg, 1)[0]
        it = iter(ld)
        next(it)
        proxy.storm(1000, 502)  # outlasts data.io_retries
        t0 = time.monotonic()
        with pytest.raises(ShardError, match=r"http://127\.0\.0\.1:\d+/text/shard-\d+\.tar: read failed at byte \d+ "
                                             r"after 4 tries.*data\.io_retries"):
            list(it)
        assert time.monotonic() - t0 < 10
        proxy.clear()
        skip = cfg_for({"text": "text"}, epochs=1, weights=(1.0,), root=proxy.url, on_error="skip", **FAST)
        skip.io_retries = 1
        ld = loaders(skip, 1)[0]
        proxy.truncate(1000, after_bytes=100)  # every body cut short
        with pytest.raises(ShardError, match="yielded no usable sample"):  # every shard skipped: bounded
            list(ld)
        st = ld.stats()
        assert st["data/skipped_shards"] >= 7 and st["data/skipped_samples"] >= 40 and st["data/samples"] == 0


def test_shard_changed_under_the_run(tmp_path):
    paths = make_sources(tmp_path / "d", n=(24, 1, 1))
    victim = paths["text"] / "shard-000001.tar"
    with nginx_server(tmp_path / "d") as url:
        cfg = cfg_for({"text": "text"}, epochs=1, weights=(1.0,), root=url, **{**FAST, "shuffle": False})
        ld = loaders(cfg, 1)[0]
        b = bytearray(victim.read_bytes())
        b[700] ^= 0xFF  # same size: only the checksum at the shard's end can tell
        victim.write_bytes(bytes(b))
        with pytest.raises(ShardError, match=r"/text/shard-000001\.tar: sha256 does not match.*changed under the run"):
            list(ld)
        victim.write_bytes(bytes(b[:-1024]))  # shorter: the size at the end
        with pytest.raises(ShardError, match=r"shard-000001\.tar: \d+ bytes but the manifest says \d+.*changed under"):
            list(loaders(cfg, 1)[0])


def test_wrong_or_missing_credentials_fail_named_and_fast(s3_cfg, monkeypatch):
    cfg = s3_cfg()
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probe
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    t0 = time.monotonic()
    cfg.storage_options = dict(cfg.storage_options, secret="wrong")
    with pytest.raises(ShardError, match=rf"s3://{BUCKET}/ds/text/manifest.json: access denied.*AWS_SECRET_ACCESS_KEY"):
        loaders(cfg, 1)
    cfg.storage_options = {k: v for k, v in cfg.storage_options.items() if k not in ("key", "secret")}
    with pytest.raises(ShardError, match=rf"s3://{BUCKET}/ds/text/manifest.json: no S3 credentials found.*AWS_ACCESS_KEY_ID"):
        loaders(cfg, 1)
    dead = cfg_for({"text": "text"}, weights=(1.0,), root=f"http://127.0.0.1:{free_port()}",
                   **{**FAST, "io_retries": 2})  # nothing listens: refused, retried, named
    with pytest.raises(ShardError, match=r"manifest.json: read failed at byte 0 after 3 tries"):
        loaders(dead, 1)
    assert time.monotonic() - t0 < 15


def test_shuffle_window_is_bounded_and_seeded():
    n, buf = 5000, 64
    a, b = within_order(0, 1, 2, 3, n, buf), within_order(0, 1, 2, 3, n, buf)
    assert np.array_equal(a, b) and sorted(a) == list(range(n))
    assert not np.array_equal(a, within_order(0, 1, 3, 3, n, buf))  # another epoch, another order
    pos = np.empty(n, int)
    pos[a] = np.arange(n)
    streamed = np.maximum.accumulate(a)  # file samples read by the time position c is used
    assert (streamed - np.arange(n)).max() < buf  # the read never runs more than buf ahead
    assert np.abs(pos - np.arange(n)).max() < buf and np.abs(pos - np.arange(n)).mean() > buf / 8
    small = within_order(0, 1, 2, 3, 50, buf)  # a shard within the window: a full permutation, as before
    assert np.array_equal(small, np.random.default_rng([0, 1, 2, 3]).permutation(50))


def test_remote_shard_is_read_in_io_chunk_requests(data):
    """data.io_chunk_mb sets the ranged requests: a shard of S bytes costs ceil(S / chunk) GETs, its
    bytes unchanged."""
    root, paths, url, _ = data
    tar = sorted((root / "d" / "text").glob("*.tar"))[0]
    size = tar.stat().st_size
    with FaultProxy(url) as proxy:
        for chunk in (1000, 4096, size):
            before = proxy.requests
            loc = Location(proxy.url, IOSettings(timeout_s=5.0, chunk=chunk))
            stream = ShardStream(loc, f"text/{tar.name}", size, hashlib.sha256(tar.read_bytes()).hexdigest())
            got = b"".join(iter(lambda: stream.read(1 << 20), b""))
            assert got == tar.read_bytes()
            assert proxy.requests - before == -(-size // chunk)
