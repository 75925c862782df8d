"""A built-in synthetic token stream with learnable structure (no files needed).

Documents are arithmetic-progression token runs (text) or repeated short motifs (speech codes
wrapped in begin/end-of-speech markers), so a tiny model's loss falls quickly. Deterministic per
(seed, dp_rank, batch index), so resume is exact: the state is just the batch counter.
"""
from __future__ import annotations

import numpy as np
import torch

from megaspeech.vocab import Vocab

TEXT, SPEECH = 0, 1


class SyntheticLoader:
    def __init__(self, vocab: Vocab, seq_len: int, micro_batch: int, dp_rank: int, dp_size: int,
                 seed: int, speech_fraction: float = 0.5, document_mask: bool = False):
        self.vocab, self.seq_len, self.micro_batch = vocab, seq_len, micro_batch
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.speech_fraction = speech_fraction
        self.document_mask = document_mask  # also emit doc_ids (as the shard packer does)
        self.batches = 0  # micro-batches yielded by this rank

    def _row(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        v, n = self.vocab, self.seq_len + 1
        toks, mods = [], []
        while sum(map(len, toks)) < n:
            length = int(rng.integers(8, 64))
            if rng.random() < self.speech_fraction and v.speech_size >= 8:
                motif = rng.integers(0, min(v.speech_size, 512), size=int(rng.integers(2, 6)))
                codes = np.resize(motif, length) + v.speech_offset
                doc = np.concatenate([[v.bos_speech_id], codes, [v.eos_speech_id]])
                mod = np.full(len(doc), SPEECH)
            else:
                start, stride = rng.integers(0, min(v.text_size, 4096)), rng.integers(1, 4)
                doc = (start + stride * np.arange(length)) % min(v.text_size, 4096)
                doc = np.concatenate([[v.bos_id], doc, [v.eos_id]])
                mod = np.full(len(doc), TEXT)
            toks.append(doc)
            mods.append(mod)
        # doc index per position: 0 for the first document, +1 at each later document's first token
        docs = np.repeat(np.arange(len(toks)), [len(t) for t in toks])
        return np.concatenate(toks)[:n], np.concatenate(mods)[:n], docs[:n]

    def _batch(self, index: int) -> dict[str, torch.Tensor]:
        rows, mods, docs = [], [], []
        for b in range(self.micro_batch):
            global_row = (index * self.dp_size + self.dp_rank) * self.micro_batch + b
            rng = np.random.default_rng([self.seed, global_row])
            r, m, d = self._row(rng)
            rows.append(r)
            mods.append(m)
            docs.append(d)
        t = torch.from_numpy(np.stack(rows)).long()
        m = torch.from_numpy(np.stack(mods)).long()
        ids = torch.tensor([[(index * self.dp_size + self.dp_rank) * self.micro_batch + b]
                            for b in range(self.micro_batch)])
        out = {"input_ids": t[:, :-1], "labels": t[:, 1:], "loss_mask": torch.ones(t.shape[0], self.seq_len),
               "modality": m[:, 1:], "sample_ids": ids}
        if self.document_mask:
            out["doc_ids"] = torch.from_numpy(np.stack(docs)[:, :-1]).long()
        return out

    def __iter__(self):
        while True:
            batch = self._batch(self.batches)
            self.batches += 1
            yield batch

    def state_dict(self) -> dict:
        return {"kind": "synthetic", "batches": self.batches, "dp_size": self.dp_size}

    def load_state_dict(self, sd: dict | list[dict]) -> None:
        # Row ids are global (index * dp_size + rank), so a new DP size resumes from the global row;
        # every old rank yielded the same number of batches, so any one state (or the list) will do.
        sd = sd[0] if isinstance(sd, list) else sd
        rows_done = sd["batches"] * sd["dp_size"]
        if rows_done % self.dp_size:
            raise ValueError(f"cannot resume synthetic data consumed at dp={sd['dp_size']} with dp={self.dp_size}")
        self.batches = rows_done // self.dp_size
