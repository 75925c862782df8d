"""Data path throughput on one core: our full path vs plain webdataset iteration of the same tars.

    python benchmarks/data_throughput.py [--tokens 40e6] [--seq-len 4096] [--micro-batch 8]

Writes generated text / speech / interleaved shards (long samples, as real documents and
utterances are), then in the same process, pinned to one core:
  raw   webdataset.WebDataset(tars).decode(): every sample read and its .npy arrays decoded
  ours  data.kind=shards loader: stream + checksum + decode + validate + 3-way mixture + packing
        into [micro_batch, seq_len] batches with loss masks and modality ids (torch tensors)
Tokens = token-array elements for raw, loss-mask positions for ours. Prints both rates, then
`ratio=<ours/raw>` last (goal >= 0.5, and >= 5M tokens/s per core).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from megaspeech.config.data import DataConfig, SourceConfig
from megaspeech.data.loader import build_train_loader
from megaspeech.data.shards import ShardWriter
from megaspeech.vocab import Vocab

VOCAB = Vocab(text_size=32000, speech_size=16384)


def write_sources(root: Path, tokens: int, seed: int = 0) -> dict[str, Path]:
    """Three sources sharing `tokens` (50% text, 25% speech, 25% interleaved), 64 MB shards."""
    rng = np.random.default_rng(seed)
    out = {}
    for kind, share in (("text", 0.5), ("speech", 0.25), ("interleaved", 0.25)):
        out[kind] = root / kind
        budget = int(tokens * share)
        with ShardWriter(out[kind], kind, VOCAB, max_bytes=64 << 20) as w:
            i = 0
            while budget > 0:
                if kind == "text":
                    s = {"tokens": rng.integers(0, VOCAB.text_size, int(rng.integers(2048, 8192)), dtype=np.int32)}
                elif kind == "speech":  # 40-240 s utterances at 12.5 Hz, half with transcripts
                    T = int(rng.integers(500, 3000))
                    s = {"codes": rng.integers(0, VOCAB.speech_size, T, dtype=np.int32), "duration": T / 12.5}
                    if i % 2:
                        s["text"] = rng.integers(0, VOCAB.text_size, T // 4, dtype=np.int32)
                else:
                    T = 4096
                    mod = (np.arange(T) // 256 % 2).astype(np.uint8)
                    toks = np.where(mod == 1, VOCAB.speech_offset + rng.integers(0, VOCAB.speech_size, T),
                                    rng.integers(0, VOCAB.text_size, T))
                    s = {"tokens": toks, "modality": mod}
                w.write(f"{kind}{i:07d}", {**s, "doc": f"generated/{kind}{i:07d}"})
                budget -= sum(len(v) for k, v in s.items() if k in ("tokens", "codes", "text"))
                i += 1
    return out


def raw_webdataset(paths: dict[str, Path]) -> tuple[int, float]:
    import webdataset as wds
    urls = [str(p) for d in paths.values() for p in sorted(d.glob("*.tar"))]
    t0, n = time.perf_counter(), 0
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode():
        for k in ("tokens.npy", "codes.npy", "text.npy"):
            if k in s:
                n += len(s[k])
    return n, time.perf_counter() - t0


def ours(paths: dict[str, Path], seq_len: int, micro_batch: int) -> tuple[int, float]:
    cfg = DataConfig(kind="shards", sources=[
        SourceConfig(name=k, path=str(p), weight=w, epochs=1)
        for (k, p), w in zip(paths.items(), (0.5, 0.25, 0.25))])
    loader = build_train_loader(cfg, VOCAB, seq_len=seq_len, micro_batch=micro_batch, dp_rank=0, dp_size=1, seed=0)
    t0, n = time.perf_counter(), 0
    for batch in loader:  # one epoch of every source
        n += int(batch["loss_mask"].sum())
    return n, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=float, default=40e6, help="total tokens in the generated shards")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--dir", default=None, help="where to write the shards (default: a temp dir)")
    p.add_argument("--repeat", type=int, default=2, help="timed passes of each path; the best is kept")
    a = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import torch
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        paths = write_sources(Path(tmp), int(a.tokens))
        size = sum(f.stat().st_size for d in paths.values() for f in d.glob("*.tar"))
        print(f"shards: {size / 2**20:.0f} MiB, {a.tokens / 1e6:.0f}M tokens, 3 sources, 1 core")
        ours(paths, a.seq_len, a.micro_batch)  # warm the page cache for both paths
        best_raw = best_ours = 0.0
        for _ in range(a.repeat):
            n, dt = raw_webdataset(paths)
            best_raw = max(best_raw, n / dt)
            n, dt = ours(paths, a.seq_len, a.micro_batch)
            best_ours = max(best_ours, n / dt)
        print(f"raw_webdataset_tokens_per_s={best_raw:.4g}")
        print(f"ours_tokens_per_s={best_ours:.4g}")
        print(f"ratio={best_ours / best_raw:.3f}")


if __name__ == "__main__":
    main()
