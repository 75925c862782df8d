"""Batched text -> speech-code generation with a KV cache, for DecoderLM weights (TP=1, one process).

`KVCacheLM` is a small inference module: it calls the model's own submodules (embedding, norms,
qkv / proj / MLP linears) on [B, S, H] activations and keeps per-layer key/value caches, so no
inference path is added to model/llm.py and no weights are copied (except the output rows it is
restricted to, gathered once). Prompts of different lengths are left-padded: padded keys are masked
and RoPE positions start at each row's first real token, so a row's result does not depend on the
padding (up to float summation order).

Text-to-token prompts use the TTS rendering of the data pipeline (megaspeech/data/packing.py):
    <|bos|> text ids <|begin_of_speech|>  ->  codes ... <|end_of_speech|>
Generation is constrained to speech codes and <|end_of_speech|> (the head is evaluated on those
speech_size + 1 rows only, which is also cheaper than the full vocabulary).

Length control: speech codes come at 12.5 per second and read speech at ~2.5 words per second
(150 words per minute), so a span of w words is expected to take e = codes_per_second * w /
words_per_second = 5 w codes. <|end_of_speech|> is refused before floor(min_ratio * e) codes and
forced at ceil(max_ratio * e) + 2 codes.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from megaspeech.config.load import check
from megaspeech.model.decode import KVCacheLM, choose, decode_batch
from megaspeech.model.llm import DecoderLM
from megaspeech.vocab import Vocab


@dataclass
class GenerationConfig:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    batch_size: int = 64
    codes_per_second: float = 12.5
    words_per_second: float = 2.5
    min_ratio: float = 0.3
    max_ratio: float = 2.0
    seed: int = 0

    def __post_init__(self):
        check(self.temperature >= 0, "generation.temperature", "must be >= 0 (0 = greedy)")
        check(0 < self.top_p <= 1, "generation.top_p", "must be in (0, 1]")
        check(self.batch_size >= 1, "generation.batch_size", "must be >= 1")
        check(0 <= self.min_ratio <= self.max_ratio, "generation.min_ratio", "must be in [0, generation.max_ratio]")

    def length_limits(self, n_words: int) -> tuple[int, int]:
        """(min, max) speech codes for a span of n_words words."""
        e = self.codes_per_second * n_words / self.words_per_second
        return int(math.floor(self.min_ratio * e)), int(math.ceil(self.max_ratio * e)) + 2


class SpeechGenerator:
    """Text ids -> speech codes with a text-to-token DecoderLM (see module docstring)."""

    def __init__(self, model: DecoderLM, vocab: Vocab, cfg: GenerationConfig, version: str = "unnamed"):
        self.vocab, self.cfg, self.version = vocab, cfg, version
        rows = torch.cat([torch.arange(vocab.speech_offset, vocab.speech_offset + vocab.speech_size),
                          torch.tensor([vocab.eos_speech_id])])
        self.lm, self.rows = KVCacheLM(model, rows), rows
        self.eos = vocab.speech_size  # index of <|end_of_speech|> among the evaluated rows
        self.stats = {"codes": 0, "seconds": 0.0, "spans": 0}

    def prompt(self, text: np.ndarray) -> torch.Tensor:
        v = self.vocab
        return torch.cat([torch.tensor([v.bos_id]), torch.as_tensor(np.asarray(text, np.int64)),
                          torch.tensor([v.bos_speech_id])])

    def generate_batch(self, texts: list[np.ndarray], n_words: list[int], gen: torch.Generator,
                       fixed_len: int | None = None) -> list[np.ndarray]:
        """One batch -> raw codes int64 [C_i]. fixed_len: exactly that many codes, no stop (benchmarks)."""
        cfg = self.cfg
        lims = [cfg.length_limits(w) for w in n_words]
        lo = torch.tensor([fixed_len if fixed_len else a for a, _ in lims])
        hi = torch.tensor([fixed_len if fixed_len else b for _, b in lims])
        cols = decode_batch(self.lm, [self.prompt(t) for t in texts], lo, hi, torch.tensor([self.eos]),
                            lambda logits: choose(logits, cfg, gen), self.rows)
        return [c.numpy() for c in cols]  # the first speech_size rows are the codes in order

    def generate(self, texts: list[np.ndarray], n_words: list[int], batch_id: int = 0) -> list[np.ndarray]:
        """Any number of spans: sorted by length into batches of generation.batch_size; results in
        input order. Sampling is seeded by (generation.seed, batch_id, batch index)."""
        t0 = time.perf_counter()
        order = sorted(range(len(texts)), key=lambda i: (-len(texts[i]), i))
        out: list[np.ndarray | None] = [None] * len(texts)
        bs = self.cfg.batch_size
        for j in range(0, len(order), bs):
            idx = order[j:j + bs]
            gen = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(
                f"{self.cfg.seed}/{batch_id}/{j}".encode()).digest()[:8], "little") >> 1)
            for i, c in zip(idx, self.generate_batch([texts[i] for i in idx], [n_words[i] for i in idx], gen)):
                out[i] = c
        self.stats["seconds"] += time.perf_counter() - t0
        self.stats["codes"] += sum(len(c) for c in out)
        self.stats["spans"] += len(texts)
        return out

    # the interleave.Converter protocol
    def convert(self, texts: list[np.ndarray], n_words: list[int], batch_id: int) -> list[np.ndarray]:
        return self.generate(texts, n_words, batch_id)

    @property
    def codes_per_second(self) -> float:
        return self.stats["codes"] / max(self.stats["seconds"], 1e-9)
