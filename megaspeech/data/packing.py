"""Samples -> token documents (unified ids + modality) -> fixed-length packed rows.

Documents (modality 0 text, 1 speech; markers count as their span's modality):
  text                 <bos> tokens <eos>
  speech, no `text`    <begin_of_speech> codes <end_of_speech>
  speech + `text`  ASR <begin_of_speech> codes <end_of_speech> text <eos>
                   TTS <bos> text <begin_of_speech> codes <end_of_speech>
  interleaved          <bos> tokens <eos>   (modality as stored)

Packing concatenates documents into one stream per rank and cuts rows of seq_len + 1 tokens that
overlap by one (row i covers stream positions [i*L, (i+1)*L]), so every token after the first is
a label exactly once; a document continues into the next row. A sample is reported in
`sample_ids` of the row where its first token lies in [i*L, (i+1)*L).
"""
from __future__ import annotations

import numpy as np
import torch

from megaspeech.data.render import render_interleaved, render_pair, render_speech, render_text
from megaspeech.vocab import Vocab

_M64 = (1 << 64) - 1


def unit_hash(*xs: int) -> float:
    """Deterministic hash of integers to [0, 1) (splitmix64), for per-sample choices."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (x & _M64)) * 0xBF58476D1CE4E5B9 & _M64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _M64
        h ^= h >> 29
    return (h >> 11) / float(1 << 53)


def format_sample(kind: str, sample: dict, vocab: Vocab, asr: bool) -> tuple[np.ndarray, np.ndarray]:
    """One sample -> (tokens int64 [T], modality uint8 [T]): the layouts of megaspeech.data.render."""
    if kind == "text":
        return render_text(sample["tokens"], vocab)
    if kind == "interleaved":
        return render_interleaved(sample["tokens"], sample["modality"], vocab)
    if "text" not in sample:
        return render_speech(sample["codes"], vocab)
    return render_pair(sample["codes"], sample["text"], vocab, asr)


class Packer:
    """Fixed-length rows from a document stream; `carry` (the cut-off rest) is part of the state."""

    def __init__(self, seq_len: int, micro_batch: int, pad_id: int, document_mask: bool,
                 loss_modalities: tuple[int, ...] = (0, 1)):
        self.L, self.B, self.pad_id, self.document_mask = seq_len, micro_batch, pad_id, document_mask
        self.loss_modalities = np.asarray(loss_modalities, np.uint8)
        self.tok = np.zeros(0, np.int64)
        self.mod = np.zeros(0, np.uint8)
        self.starts: list[tuple[int, int]] = []  # (position in carry, sample id) of documents starting there
        self.done = False

    def state_dict(self) -> dict:
        return {"tokens": self.tok.tolist(), "modality": self.mod.tolist(),
                "starts": [list(s) for s in self.starts], "done": self.done}

    def load_state_dict(self, sd: dict) -> None:
        self.tok = np.asarray(sd["tokens"], np.int64)
        self.mod = np.asarray(sd["modality"], np.uint8)
        self.starts = [tuple(s) for s in sd["starts"]]
        self.done = sd["done"]

    def next_batch(self, draw) -> dict[str, torch.Tensor] | None:
        """draw() -> (tokens, modality, sample_id) or None when the sources are exhausted.
        Returns the loader.py batch dict, or None once nothing is left (the last batch is padded)."""
        L, B = self.L, self.B
        if self.done:
            return None
        need = B * L + 1
        toks, mods, starts, n = [self.tok], [self.mod], list(self.starts), len(self.tok)
        while n < need:
            x = draw()
            if x is None:
                self.done = True
                break
            t, m, sid = x
            starts.append((n, sid))
            toks.append(t)
            mods.append(m)
            n += len(t)
        if n <= 1:  # only the overlap token (already a label) or nothing: the stream has ended
            return None
        size = max(n, need)
        buf = np.full(size, self.pad_id, np.int64)
        mbuf = np.zeros(size, np.uint8)
        np.concatenate(toks, out=buf[:n])
        np.concatenate(mods, out=mbuf[:n])
        idx = np.arange(B)[:, None] * L + np.arange(L + 1)
        rows, mrows = buf[idx], mbuf[idx]
        loss = ((idx[:, 1:] < n) & np.isin(mrows[:, 1:], self.loss_modalities)).astype(np.float32)
        # carry: from the last row's final token on (it is the next row's first input)
        self.tok, self.mod = buf[B * L:n].copy(), mbuf[B * L:n].copy()
        self.starts = [(p - B * L, s) for p, s in starts if p >= B * L]
        per_row: list[list[int]] = [[] for _ in range(B)]
        for p, s in starts:
            if p < B * L:
                per_row[p // L].append(s)
        m = max(1, max(len(r) for r in per_row))
        sids = np.full((B, m), -1, np.int64)
        for i, r in enumerate(per_row):
            sids[i, :len(r)] = r
        out = {"input_ids": torch.from_numpy(rows[:, :-1].copy()), "labels": torch.from_numpy(rows[:, 1:].copy()),
               "loss_mask": torch.from_numpy(loss), "modality": torch.from_numpy(mrows[:, 1:].astype(np.int64)),
               "sample_ids": torch.from_numpy(sids)}
        if self.document_mask:
            first = np.zeros(size + 1, np.int64)
            first[[p for p, _ in starts]] = 1
            first[n] = 1  # padding is its own document
            out["doc_ids"] = torch.from_numpy(np.cumsum(first[idx[:, :-1]], axis=1))
        return out
