"""Synthetic-data test material: the committed demo text shards, a reversible stand-in converter
(text id t -> two codes) and small text / pair datasets."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import megaspeech
from megaspeech.data.shards import ShardWriter

DEMO = Path(megaspeech.__file__).parent / "demo" / "text"


class ReversibleCodec:
    """Each text id t < 4096 becomes codes (t >> 10, t & 1023) (speech_size 1024); decode inverts."""
    version = "reversible-codec/1"

    def __init__(self):
        self.calls: list[int] = []

    def convert(self, texts, n_words, batch_id):
        self.calls.append(len(texts))
        return [np.stack([t >> 10, t & 1023], axis=1).reshape(-1).astype(np.int64) for t in texts]

    @staticmethod
    def decode(codes: np.ndarray) -> np.ndarray:
        c = np.asarray(codes).reshape(-1, 2)
        return (c[:, 0] << 10) | c[:, 1]


def write_text_dataset(out: Path, docs, vocab, per_shard: int) -> Path:
    with ShardWriter(out, "text", vocab, max_samples=per_shard) as w:
        for k, s in docs:
            w.write(k, {"doc": s.get("source", f"generated/{k}"), **s})
    return out


def word_codes(ids: np.ndarray, per_word: int = 5) -> np.ndarray:
    """Generated stand-in for tokenized speech of one word: `per_word` codes fixed by its text ids
    (12.5 codes/s at 2.5 words/s), so a text-to-token model has a learnable target."""
    h = int(np.sum((np.asarray(ids, np.int64) + 1) * (np.arange(len(ids)) + 7))) * 2654435761
    return np.array([(h >> (3 * j)) % 1024 for j in range(per_word)], np.int64)


def write_pair_dataset(out: Path, docs, vocab, starts_word, words_per_pair=(4, 12), per_shard=200,
                       limit=400) -> Path:
    """Supervised `speech` shards (codes + transcript ids) cut from real text documents."""
    from megaspeech.synth.spans import word_bounds
    rng = np.random.default_rng(0)
    n = 0
    with ShardWriter(out, "speech", vocab, max_samples=per_shard) as w:
        for key, s in docs:
            t = s["tokens"]
            b = word_bounds(t, starts_word)
            i = 0
            while i < len(b) - 1 and n < limit:
                k = int(rng.integers(*words_per_pair))
                j = min(i + k, len(b) - 1)
                text = t[b[i]:b[j]].astype(np.int64)
                codes = np.concatenate([word_codes(t[b[x]:b[x + 1]]) for x in range(i, j)])
                w.write(f"{key}_{i}", {"codes": codes, "text": text, "duration": len(codes) / 12.5,
                                       "doc": s.get("doc", s.get("source", f"generated/{key}"))})
                n += 1
                i = j
    return out
