"""CTC forced alignment for LaSyn's duration targets: the Viterbi path is the best valid CTC path
(checked against enumeration), planted durations are recovered through a trained probe."""
import itertools

import numpy as np
import torch

from megaspeech.bridge.align import align_pairs, durations, train_ctc_probe, viterbi_path


def _collapse(states, labels):
    return states[0] in (0, 1) and states[-1] >= len(labels) - 2 and all(
        b == a or b == a + 1 or (b == a + 2 and b % 2 == 1 and labels[b] != labels[a]) for a, b in zip(states, states[1:]))


def test_viterbi_is_the_best_valid_ctc_path():
    rng = np.random.default_rng(0)
    for units in ([1, 2], [3, 3], [2, 1, 2]):
        labels = [0]
        for u in units:
            labels += [u, 0]
        for T in range(len(units) + 1, 7):
            logp = np.log(rng.dirichlet(np.ones(4), size=T))
            best = max((sum(logp[t, labels[s]] for t, s in enumerate(p)), p)
                       for p in itertools.product(range(len(labels)), repeat=T) if _collapse(p, labels))
            path = viterbi_path(logp, units)
            assert path is not None and _collapse(tuple(path), labels)
            assert abs(sum(logp[t, labels[s]] for t, s in enumerate(path)) - best[0]) < 1e-9
    assert viterbi_path(np.zeros((2, 4)), [3, 3]) is None  # a repeat needs a blank between: 3 frames


def test_durations_count_every_frame_once():
    path = np.array([0, 0, 1, 1, 2, 3, 4, 4, 5, 6, 6])  # blank blank u0 u0 blank u1 blank blank u2 blank blank
    assert durations(path, 3) == [5, 3, 3]


def test_probe_recovers_planted_durations():
    """Latents = a vector per unit (+ a silence vector before the first) + noise, planted frame counts:
    the probe's alignment finds every boundary within one frame, most exactly."""
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(6, 16, generator=g) * 3  # 0: silence, 1-5: units
    rng = np.random.default_rng(1)
    pairs, planted = [], []
    for _ in range(48):
        units = [int(rng.integers(1, 6))]
        while len(units) < int(rng.integers(3, 7)):  # no unit twice in a row: that boundary is ambiguous
            units += [u for u in [int(rng.integers(1, 6))] if u != units[-1]]
        lead = int(rng.integers(1, 4))
        d = rng.integers(2, 6, size=len(units)).tolist()
        frames = [0] * lead + [u for u, n in zip(units, d) for _ in range(n)]
        lat = protos[frames] + 0.3 * torch.randn(len(frames), 16, generator=g)
        pairs.append((units, lat))
        planted.append([d[0] + lead] + d[1:])  # leading silence counts to the first unit
    head = train_ctc_probe(pairs, 6, steps=300, seed=0)
    got, failed = align_pairs(head, pairs)
    assert failed == 0
    edges = lambda d: np.cumsum(d)  # noqa: E731
    off = np.concatenate([np.abs(edges(a) - edges(b)) for a, b in zip(got, planted)])
    assert off.max() <= 1 and (off == 0).mean() > 0.8, off
