"""Data path throughput and memory (issue #38): our loader from disk vs plain webdataset, from HTTP and
S3 through a 20 ms proxy vs disk, and peak memory with 512 MiB vs 16 MiB shards.

    python benchmarks/data_throughput.py [--only disk|remote|memory] [--tokens 160e6] [--mem-tokens 320e6]
        [--seq-len 4096] [--micro-batch 8] [--repeat 2] [--delay-ms 20] [--dir DIR] [--profile http|s3]

Writes generated text / speech / interleaved shards (long samples, as real documents and
utterances are). The loader being timed runs in this process pinned to the first core; nginx,
moto's S3 server and the delaying proxy are pinned to the other cores (when there are any).
  disk    (baseline of every ratio below) data.kind=shards loader on the local shards: stream +
          checksum + decode + validate + 3-way mixture + packing into [micro_batch, seq_len]
          batches with loss masks and modality ids (torch tensors)
  raw     webdataset.WebDataset(tars).decode() of the same tars: every sample read and decoded
  http    the same loader, data.root = nginx through a proxy adding --delay-ms per request
  s3      the same loader, data.root = s3://BUCKET/... on moto through the same kind of proxy
  memory  per shard size (16 and 512 MiB, same samples, >= 1.1 GiB in all) a fresh child process
          builds the loader, notes its RSS (baseline), resets the peak (/proc/self/clear_refs) and
          iterates the loader fully: peak RSS during the iteration (VmHWM) - baseline = increase
Tokens = loss-mask positions for the loader, token-array elements for raw. Prints, per part:
  disk:   raw_webdataset_tokens_per_s=, ours_tokens_per_s=, ratio= (ours/raw; goal >= 0.5)
  remote: disk_tokens_per_s=, http_tokens_per_s=, s3_tokens_per_s=, then ceilings without our
          loader (one sequential stream of data.io_chunk_mb ranged GETs of the same bytes, converted to
          tokens/s at the shards' tokens per byte): {nginx,moto}_direct_get_tokens_per_s= and
          {http,s3}_proxied_get_tokens_per_s=; {disk,http,s3}_steady_tokens_per_s= (after the first
          batch: no set-up, no first fill), ratio_http_steady=, ratio_s3_steady=; then ratio_http= and
          ratio_s3= (set-up included, /disk; goal >= 0.9)
  memory: mem16_/mem512_ baseline_mib= peak_mib= increase_mib=, ratio_mem_peak= (process peaks) and
          ratio_mem= (increases 512/16; goal <= 1.2: torch's import dominates the raw RSS), with the
          default data.open_shards=4 (more 16 MiB shards are open at once: up to 4 per source), then
          the same with _open1 (open_shards=1: one open shard per source in both cases)
"""
from __future__ import annotations

import argparse
import cProfile
import contextlib
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from megaspeech.config.data import DataConfig, SourceConfig
from megaspeech.data.loader import build_train_loader
from megaspeech.data.remote import IOSettings
from megaspeech.data.shards import ShardWriter
from megaspeech.vocab import Vocab

VOCAB = Vocab(text_size=32000, speech_size=16384)
WEIGHTS = (0.5, 0.25, 0.25)
CHUNK = IOSettings().chunk  # bytes per ranged GET of the ceilings: the loader's default (data.io_chunk_mb)


def write_sources(root: Path, tokens: int, seed: int = 0, max_bytes=(64 << 20,)) -> list[dict[str, Path]]:
    """Three sources sharing `tokens` (50% text, 25% speech, 25% interleaved); the same samples written
    once per shard size in `max_bytes` (under root/<i>/), one {kind: dir} per size."""
    rng = np.random.default_rng(seed)
    out = [{} for _ in max_bytes]
    for kind, share in zip(("text", "speech", "interleaved"), WEIGHTS):
        budget = int(tokens * share)
        with contextlib.ExitStack() as stack:
            writers = []
            for j, mb in enumerate(max_bytes):
                out[j][kind] = root / str(j) / kind
                writers.append(stack.enter_context(ShardWriter(out[j][kind], kind, VOCAB, max_bytes=mb)))
            i = 0
            while budget > 0:
                s = sample(kind, i, rng)
                for w in writers:
                    w.write(f"{kind}{i:07d}", {**s, "doc": f"generated/{kind}{i:07d}"})
                budget -= sum(len(v) for k, v in s.items() if k in ("tokens", "codes", "text"))
                i += 1
    return out


def sample(kind: str, i: int, rng) -> dict:
    """One generated sample, long as real documents and utterances are."""
    if kind == "text":
        return {"tokens": rng.integers(0, VOCAB.text_size, int(rng.integers(2048, 8192)), dtype=np.int32)}
    if kind == "speech":  # 40-240 s utterances at 12.5 Hz, half with transcripts
        T = int(rng.integers(500, 3000))
        s = {"codes": rng.integers(0, VOCAB.speech_size, T, dtype=np.int32), "duration": T / 12.5}
        if i % 2:
            s["text"] = rng.integers(0, VOCAB.text_size, T // 4, dtype=np.int32)
        return s
    T = 4096
    mod = (np.arange(T) // 256 % 2).astype(np.uint8)
    toks = np.where(mod == 1, VOCAB.speech_offset + rng.integers(0, VOCAB.speech_size, T),
                    rng.integers(0, VOCAB.text_size, T))
    return {"tokens": toks, "modality": mod}


def shard_files(paths: dict[str, Path]) -> list[Path]:
    return [p for d in paths.values() for p in sorted(d.glob("*.tar"))]


def raw_webdataset(paths: dict[str, Path]) -> tuple[int, float]:
    import webdataset as wds
    t0, n = time.perf_counter(), 0
    for s in wds.WebDataset([str(p) for p in shard_files(paths)], shardshuffle=False, empty_check=False).decode():
        for k in ("tokens.npy", "codes.npy", "text.npy"):
            if k in s:
                n += len(s[k])
    return n, time.perf_counter() - t0


def make_loader(sources: dict[str, str], seq_len: int, micro_batch: int, **cfg_kw):
    cfg = DataConfig(kind="shards", sources=[SourceConfig(name=k, path=str(p), weight=w, epochs=1)
                                             for (k, p), w in zip(sources.items(), WEIGHTS)], **cfg_kw)
    return build_train_loader(cfg, VOCAB, seq_len=seq_len, micro_batch=micro_batch, dp_rank=0, dp_size=1, seed=0)


def ours(sources: dict[str, str], seq_len: int, micro_batch: int,
         **cfg_kw) -> tuple[int, float, float, float, float]:
    """Loss-mask tokens of one epoch of every source, the wall and CPU seconds (this process, all its
    threads) it took, loader set-up included, the tokens/s after the first batch (steady state:
    without the set-up and the first fill of the open shards) and the seconds to the first batch."""
    t0, c0, n, first = time.perf_counter(), time.process_time(), 0, None
    for batch in make_loader(sources, seq_len, micro_batch, **cfg_kw):
        n += int(batch["loss_mask"].sum())
        if first is None:
            first = (n, time.perf_counter())
    t1 = time.perf_counter()
    steady = (n - first[0]) / max(t1 - first[1], 1e-9) if first else 0.0
    return n, t1 - t0, time.process_time() - c0, steady, (first[1] - t0 if first else 0.0)


def best_rates(runs: dict, repeat: int) -> dict[str, tuple[int, float, float, float, float]]:
    """{name: (tokens, best tokens/s, CPU s of that run, best steady tokens/s, least seconds to the first
    batch)} over `repeat` interleaved rounds of every fn() in `runs` (interleaved: a load change on the
    machine hits all)."""
    best: dict[str, tuple[int, float, float, float, float]] = {}
    for _ in range(repeat):
        for name, fn in runs.items():
            n, dt, cpu, steady, first = fn()
            old = best.get(name, (n, 0.0, 0.0, 0.0, float("inf")))
            n, rate, cpu = (n, n / dt, cpu) if n / dt > old[1] else old[:3]
            best[name] = (n, rate, cpu, max(old[3], steady), min(old[4], first))
    return best


def timed(sources: dict[str, str], a, **cfg_kw):
    """ours() on `sources` with the command line's batch shape, as a run for best_rates."""
    return lambda: ours(sources, a.seq_len, a.micro_batch, **cfg_kw)


# ---------------------------------------------------------------------------------- cores
def pin_self() -> tuple[set[int], set[int]]:
    """Pin this process to its first allowed core; returns (that core, the other allowed cores)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else [0]
    mine, rest = {cores[0]}, set(cores[1:]) or {cores[0]}
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, mine)
    import torch
    torch.set_num_threads(1)
    return mine, rest


def pin_children(cpus: set[int]) -> list[int]:
    """Pin every descendant process of this one (servers, their workers, proxies) to `cpus`."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [os.getpid()]
    while todo:
        pid = todo.pop()
        kids = [p for p, pp in parent.items() if pp == pid]
        found += kids
        todo += kids
    for pid in found:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, cpus)
    return found


# ---------------------------------------------------------------------------------- parts
def part_disk(paths: dict[str, Path], a) -> None:
    ours(paths, a.seq_len, a.micro_batch)  # warm the page cache for both paths
    best = best_rates({"raw": lambda: (*raw_webdataset(paths), 0.0, 0.0, 0.0), "ours": timed(paths, a)}, a.repeat)
    print(f"raw_webdataset_tokens_per_s={best['raw'][1]:.4g}")
    print(f"ours_tokens_per_s={best['ours'][1]:.4g}")
    print(f"ratio={best['ours'][1] / best['raw'][1]:.3f}", flush=True)


def sequential_get(fs, urls: list[str], sizes: list[int]) -> float:
    """Bytes/s of one sequential stream of CHUNK ranged GETs of every file (no loader, no decode)."""
    t0 = time.perf_counter()
    for url, size in zip(urls, sizes):
        for off in range(0, size, CHUNK):
            fs.cat_file(url, start=off, end=min(off + CHUNK, size))
    return sum(sizes) / (time.perf_counter() - t0)


def ceilings(root: Path, files: list[Path], tok_per_byte: float, bases: dict[str, tuple]) -> None:
    """Raw ranged-GET throughput of the same bytes, without our loader, as tokens/s at tok_per_byte."""
    import fsspec
    sizes = [f.stat().st_size for f in files]
    rel = [f.relative_to(root).as_posix() for f in files]
    for name, (proto, base, opts) in bases.items():
        fs = fsspec.filesystem(proto, skip_instance_cache=True, **opts)
        rate = sequential_get(fs, [f"{base}/{r}" for r in rel], sizes)
        print(f"{name}_get_tokens_per_s={rate * tok_per_byte:.4g}  ({rate / 2**20:.0f} MiB/s)", flush=True)


def profiled(label: str, fn):
    prof = cProfile.Profile()
    out = prof.runcall(fn)
    print(f"--- cProfile of the {label} loader run (top 25 by internal time) ---")
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(25)
    return out


def part_remote(root: Path, paths: dict[str, Path], a, others: set[int]) -> None:
    from net_servers import BUCKET, nginx_server, proxy_process, s3_server, upload_dir
    files = shard_files(paths)
    nbytes = sum(f.stat().st_size for f in files)
    rel = {k: p.relative_to(root).as_posix() for k, p in paths.items()}
    with nginx_server(root) as http_url, s3_server() as (s3_url, opts):
        t0 = time.perf_counter()
        upload_dir(root, f"s3://{BUCKET}/bench", opts)
        print(f"(uploaded {nbytes / 2**20:.0f} MiB to moto in {time.perf_counter() - t0:.0f} s)", flush=True)
        with proxy_process(http_url, a.delay_ms, others) as http_proxy, \
                proxy_process(s3_url, a.delay_ms, others) as s3_proxy:
            print(f"(pinned {len(pin_children(others))} server/proxy processes to cores {sorted(others)}; "
                  f"{a.delay_ms:g} ms added per request)", flush=True)
            s3_opts = {**opts, "endpoint_url": s3_proxy}
            runs = {"disk": timed(paths, a), "http": timed({k: f"{http_proxy}/{r}" for k, r in rel.items()}, a),
                    "s3": timed({k: f"s3://{BUCKET}/bench/{r}" for k, r in rel.items()}, a, storage_options=s3_opts)}
            for name, fn in runs.items():  # warm-up: page cache, moto's first reads
                print(f"(warm-up {name}: {fn()[1]:.1f} s)", flush=True)
            best = best_rates(runs, a.repeat)
            n = best["disk"][0]
            for name, (m, rate, cpu, _, _) in best.items():
                assert m == n, f"token counts differ: disk {n}, {name} {m}"
                print(f"{name}_tokens_per_s={rate:.4g}  ({n / 1e6:.1f}M tokens, {n / rate:.1f} s wall, "
                      f"{cpu:.1f} s CPU of the loader process; set-up included)", flush=True)
            for name, (_, _, _, steady, first) in best.items():
                print(f"{name}_steady_tokens_per_s={steady:.4g}  (after the first batch, which took {first:.2f} s "
                      f"from the loader's build)", flush=True)
            s3_get = {k: v for k, v in opts.items() if k != "endpoint_url"}
            ceilings(root, files, n / nbytes, {
                "nginx_direct": ("http", http_url, {}), "http_proxied": ("http", http_proxy, {}),
                "moto_direct": ("s3", f"{BUCKET}/bench", {**s3_get, "endpoint_url": s3_url}),
                "s3_proxied": ("s3", f"{BUCKET}/bench", s3_opts)})
            if a.profile:
                profiled(a.profile, runs[a.profile])
    print(f"ratio_http={best['http'][1] / best['disk'][1]:.3f}")
    print(f"ratio_http_steady={best['http'][3] / best['disk'][3]:.3f}")
    print(f"ratio_s3_steady={best['s3'][3] / best['disk'][3]:.3f}")
    print(f"ratio_s3={best['s3'][1] / best['disk'][1]:.3f}", flush=True)


# ---------------------------------------------------------------------------------- memory
def status_mib(key: str) -> float:
    """VmRSS (now) or VmHWM (peak of this program: unlike ru_maxrss, not the parent's size before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def mem_child(root: str, seq_len: int, micro_batch: int, open_shards: int) -> None:
    """In a fresh process: build the loader, note RSS, reset the peak (Linux clear_refs 5), iterate
    the loader fully, note the peak RSS during the iteration (JSON line)."""
    pin_self()
    paths = {k: str(Path(root) / k) for k in ("text", "speech", "interleaved")}
    loader = make_loader(paths, seq_len, micro_batch, open_shards=open_shards)
    peak_before, before = status_mib("VmHWM"), status_mib("VmRSS")
    try:  # without the reset, a higher peak during imports / set-up would hide the loader's
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += int(batch["loss_mask"].sum())
    peak = status_mib("VmHWM")
    print(json.dumps({"baseline_mib": before, "setup_peak_mib": peak_before, "peak_mib": peak, "reset": reset,
                      "tokens": n, "seconds": time.perf_counter() - t0}))


def part_memory(tmp: Path, a) -> None:
    t0 = time.perf_counter()
    sizes = (16, 512)
    for mib, paths in zip(sizes, write_sources(tmp / "mem", int(a.mem_tokens), max_bytes=[m << 20 for m in sizes])):
        files = shard_files(paths)
        per = ", ".join(f"{k} {len(list(p.glob('*.tar')))}" for k, p in paths.items())
        print(f"(mem{mib}: {sum(f.stat().st_size for f in files) / 2**30:.2f} GiB in {len(files)} shards ({per}), "
              f"{a.mem_tokens / 1e6:.0f}M tokens)", flush=True)
    print(f"(both written in {time.perf_counter() - t0:.0f} s)", flush=True)
    for open_shards, tag in ((4, ""), (1, "_open1")):  # data.open_shards default 4, then 1
        res = {mib: mem_case(tmp / "mem" / str(j), mib, open_shards, tag, a) for j, mib in enumerate(sizes)}
        assert res[16]["tokens"] == res[512]["tokens"], "the two shard sizes hold different data"
        print(f"ratio_mem_peak{tag}={res[512]['raw_peak_mib'] / res[16]['raw_peak_mib']:.3f}")
        print(f"ratio_mem{tag}={res[512]['increase_mib'] / max(res[16]['increase_mib'], 1.0):.3f}", flush=True)
    shutil.rmtree(tmp / "mem")


def mem_case(d: Path, mib: int, open_shards: int, tag: str, a) -> dict:
    """One memory child (a fresh process) on the shards in d; prints and returns its figures."""
    out = subprocess.run([sys.executable, __file__, "--mem-child", str(d), "--seq-len", str(a.seq_len),
                          "--micro-batch", str(a.micro_batch), "--mem-open-shards", str(open_shards)],
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"memory child for {mib} MiB shards failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["increase_mib"] = r["peak_mib"] - r["baseline_mib"]
    r["raw_peak_mib"] = max(r["peak_mib"], r["setup_peak_mib"])
    m = f"mem{mib}{tag}"
    print(f"{m}_baseline_mib={r['baseline_mib']:.0f} {m}_peak_mib={r['peak_mib']:.0f} "
          f"{m}_increase_mib={r['increase_mib']:.0f}  (open_shards={open_shards}; process peak "
          f"{r['raw_peak_mib']:.0f} MiB, peak before iterating {r['setup_peak_mib']:.0f} MiB, peak reset: "
          f"{r['reset']}; {r['tokens'] / 1e6:.0f}M tokens in {r['seconds']:.0f} s)", flush=True)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["disk", "remote", "memory"], action="append",
                   help="run only this part (repeatable); default: all three")
    p.add_argument("--tokens", type=float, default=160e6,
                   help="total tokens of the disk and remote shards (160M: ~470 MiB, several seconds a pass, "
                        "so that the set-up is a small part of it, as in a run)")
    p.add_argument("--mem-tokens", type=float, default=480e6,
                   help="total tokens of the memory shards (default ~1.36 GiB: 2 shards of 512 MiB for text)")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--delay-ms", type=float, default=20.0, help="added by the proxy to every HTTP / S3 request")
    p.add_argument("--dir", default=None, help="where to write the shards (default: a temp dir)")
    p.add_argument("--repeat", type=int, default=2, help="timed passes of each path; the best is kept")
    p.add_argument("--profile", choices=["http", "s3"], default=None, help="cProfile one more remote run")
    p.add_argument("--mem-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mem-open-shards", type=int, default=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.mem_child:
        return mem_child(a.mem_child, a.seq_len, a.micro_batch, a.mem_open_shards)
    parts = a.only or ["disk", "remote", "memory"]
    _, others = pin_self()
    if a.dir:
        Path(a.dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        if "disk" in parts or "remote" in parts:
            paths = write_sources(Path(tmp) / "d", int(a.tokens))[0]
            size = sum(f.stat().st_size for f in shard_files(paths))
            print(f"shards: {size / 2**20:.0f} MiB, {a.tokens / 1e6:.0f}M tokens, 3 sources, loader on 1 core",
                  flush=True)
            if "disk" in parts:
                part_disk(paths, a)
            if "remote" in parts:
                part_remote(Path(tmp) / "d" / "0", paths, a, others)
        if "memory" in parts:
            part_memory(Path(tmp), a)


if __name__ == "__main__":
    main()
