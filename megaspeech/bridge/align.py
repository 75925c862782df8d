"""CTC forced alignment: which frames of an utterance say which unit of its transcript.

LaSyn's synthesizers (megaspeech/bridge/lasyn.py) learn durations (frames per text unit) from
aligned (text, latent) pairs. The alignment comes from a linear CTC probe on the frozen encoder's
latents (`train_ctc_probe`, the shape of the bridge's CTC head) and the Viterbi path through the CTC
topology (`viterbi_path`): blank, unit 1, blank, unit 2, ... blank; a repeated unit needs a blank
between its copies. `durations` turns a path into frames per unit: blank frames belong to the unit
before them (leading blanks to the first unit), so every frame is counted once.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def viterbi_path(logp: np.ndarray, units: list[int], blank: int = 0) -> np.ndarray | None:
    """logp [T, V] frame log-probabilities, units (no blank) -> the best CTC state per frame, int [T]
    (state 2k+1 is unit k, even states blanks); None when T frames cannot hold the units."""
    T, U = logp.shape[0], len(units)
    labels = np.full(2 * U + 1, blank, dtype=np.int64)
    labels[1::2] = units
    S = labels.shape[0]
    skip = np.zeros(S, dtype=bool)  # s-2 -> s allowed: a unit that differs from the unit before it
    skip[3::2] = labels[3::2] != labels[1:-2:2]
    need = U + int(np.sum(labels[3::2] == labels[1:-2:2]))  # frames the shortest path takes
    if U == 0 or T < need:
        return None
    emit = logp[:, labels]  # [T, S]
    score = np.full(S, -np.inf)
    score[:2] = emit[0, :2]
    back = np.zeros((T, S), dtype=np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    for t in range(1, T):
        stay = score
        one = np.concatenate([[-np.inf], score[:-1]])
        two = np.where(skip, np.concatenate([[-np.inf, -np.inf], score[:-2]]), -np.inf)
        cand = np.stack([stay, one, two])
        back[t] = cand.argmax(0)
        score = cand.max(0) + emit[t]
    s = S - 1 if score[S - 1] >= score[S - 2] else S - 2
    path = np.empty(T, dtype=np.int64)
    for t in range(T - 1, -1, -1):
        path[t] = s
        s -= int(back[t, s])
    return path


def durations(path: np.ndarray, n_units: int) -> list[int]:
    """A state path of viterbi_path -> frames per unit (blank frames to the unit before; leading
    blanks to the first unit): sums to the path's length, every unit >= 1."""
    unit = np.maximum((path - 1) // 2, 0)  # odd s: (s-1)/2; blank s: the unit before it
    return np.bincount(unit, minlength=n_units).tolist()


def train_ctc_probe(pairs: list[tuple[list[int], torch.Tensor]], vocab: int, steps: int = 300, batch: int = 8,
                    lr: float = 2e-3, seed: int = 0) -> torch.nn.Linear:
    """A linear CTC head (latent dim -> vocab, blank 0) trained on (units, latents [T, D]) pairs."""
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(pairs[0][1].shape[1], vocab)
    with torch.no_grad():
        w = torch.randn(head.weight.shape, generator=gen) / head.weight.shape[1] ** 0.5
        head.weight.copy_(w)
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(len(pairs), size=min(batch, len(pairs)), replace=False)
        loss = 0.0
        for i in idx:
            units, lat = pairs[i]
            lp = head(lat).log_softmax(-1)[:, None]
            loss = loss + F.ctc_loss(lp, torch.tensor([units]), torch.tensor([lat.shape[0]]),
                                     torch.tensor([len(units)]), blank=0, reduction="sum",
                                     zero_infinity=True) / len(units)
        opt.zero_grad()
        (loss / len(idx)).backward()
        opt.step()
    return head.eval()


@torch.no_grad()
def align_pairs(head: torch.nn.Linear, pairs: list[tuple[list[int], torch.Tensor]]) -> tuple[list[list[int] | None], int]:
    """Frames per unit of each pair from the probe's Viterbi alignment ([None] where the utterance is
    too short for its transcript), and how many failed."""
    out, failed = [], 0
    for units, lat in pairs:
        path = viterbi_path(head(lat).log_softmax(-1).numpy(), units)
        out.append(None if path is None else durations(path, len(units)))
        failed += path is None
    return out, failed
