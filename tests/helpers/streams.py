"""Mixture streaming test material: three small shard sources, their config, and loaders per DP rank."""
from __future__ import annotations

import numpy as np
import torch

from megaspeech.config.data import DataConfig, SourceConfig
from megaspeech.data.loader import build_train_loader
from megaspeech.data.shards import ShardWriter
from megaspeech.vocab import Vocab

def make_sources(root, n=(40, 30, 20), seed=0):
    """text / speech (half with transcripts) / interleaved datasets of generated samples."""
    rng = np.random.default_rng(seed)
    paths = {}
    for kind, count in zip(("text", "speech", "interleaved"), n):
        paths[kind] = root / kind
        with ShardWriter(paths[kind], kind, V, max_samples=6) as w:
            for i in range(count):
                T = int(rng.integers(3, 40))
                if kind == "text":
                    s = {"tokens": rng.integers(0, V.text_size, T)}
                elif kind == "speech":
                    s = {"codes": rng.integers(0, V.speech_size, T)}
                    if i % 2:
                        s["text"] = rng.integers(0, V.text_size, T // 3 + 1)
                else:
                    s = {"tokens": rng.integers(0, V.text_size, T), "modality": np.zeros(T, np.uint8)}
                    s["tokens"][T // 2:] = V.speech_id(rng.integers(0, V.speech_size, T - T // 2))
                    s["modality"][T // 2:] = 1
                w.write(f"{kind}{i:04d}", {**s, "doc": f"generated/{kind}{i:04d}"})
    return paths


def cfg_for(paths, epochs=1, weights=(0.3, 0.4, 0.3), **kw):
    return DataConfig(kind="shards", sources=[SourceConfig(name=k, path=str(p), weight=w, epochs=epochs)
                                              for (k, p), w in zip(paths.items(), weights)], **kw)


def loaders(cfg, dp, seed=7):
    return [build_train_loader(cfg, V, seq_len=L, micro_batch=B, dp_rank=r, dp_size=dp, seed=seed) for r in range(dp)]


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


V = Vocab(text_size=1000, speech_size=512)


L, B = 32, 2
