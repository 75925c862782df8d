"""VectorQuantizer: straight-through output, commitment loss, EMA update against a plain torch
EMA, dead-code restart, state_dict round trip, the fused code-stats kernel, and 2-rank
all-reduce of the EMA statistics."""
import io
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from megaspeech.kernels.vq import VectorQuantizer, code_stats, code_stats_reference, perplexity
from megaspeech.kernels.vq_lookup import vq_lookup_reference

BACKENDS = ["triton", "torch"]


def _plain_ema(embed, count, total, x, idx, decay, eps):
    """One EMA step written out with one-hot matrices (no index_add/atomics)."""
    onehot = F.one_hot(idx, embed.shape[0]).float()
    count = decay * count + (1 - decay) * onehot.sum(0)
    total = decay * total + (1 - decay) * (onehot.T @ x)
    n = count.sum()
    smoothed = (count + eps) / (n + embed.shape[0] * eps) * n
    return total / smoothed[:, None], count, total


@pytest.mark.parametrize("backend", BACKENDS)
def test_code_stats_matches_reference(seed, backend):
    k = 37
    idx = torch.randint(0, k, (300,))
    idx[:50] = 3  # many rows on one code: atomics must not lose updates
    x = torch.randn(300, 150)
    counts, sums = code_stats(idx, x, k, backend=backend)
    ref_c, ref_s = code_stats_reference(idx, x, k)
    assert torch.equal(counts, ref_c) and counts.sum() == 300
    torch.testing.assert_close(sums, ref_s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_and_ema_match_plain_torch(seed, backend):
    k, d, decay, eps = 40, 12, 0.9, 1e-5
    vq = VectorQuantizer(k, d, decay=decay, eps=eps, commitment_weight=10.0, backend=backend)
    embed, count, total = vq.embed.clone(), vq.ema_count.clone(), vq.ema_sum.clone()
    for _ in range(3):
        x = torch.randn(4, 25, d, requires_grad=True)
        old = vq.embed.clone()
        q, idx, commit = vq(x)
        flat = x.detach().reshape(-1, d)
        ref_idx = vq_lookup_reference(flat, old)[0]
        assert idx.shape == (4, 25)
        # equal to the reference except where fp32 rounding decides a near-tie
        true = torch.cdist(flat.double(), old.double()).pow(2)
        rows = torch.arange(flat.shape[0])
        assert torch.all(true[rows, idx.reshape(-1)] - true[rows, ref_idx] <= 1e-4)
        assert (idx.reshape(-1) == ref_idx).float().mean() >= 0.98
        assert torch.equal(q.detach(), old[idx])  # pre-update codebook rows, exactly
        g = torch.randn_like(q)
        xx = x.detach().clone().requires_grad_()
        ref_commit = 10.0 * F.mse_loss(xx, old[idx])
        torch.testing.assert_close(commit, ref_commit, rtol=1e-5, atol=1e-6)
        ((q * g).sum() + commit).backward()
        ref_commit.backward()
        torch.testing.assert_close(x.grad, g + xx.grad, rtol=1e-5, atol=1e-6)  # straight-through
        embed, count, total = _plain_ema(embed, count, total, flat, idx.reshape(-1), decay, eps)
        torch.testing.assert_close(vq.embed, embed, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(vq.ema_count, count, rtol=1e-6, atol=1e-6)
    vq.eval()
    before = vq.embed.clone()
    vq(torch.randn(10, d))
    assert torch.equal(vq.embed, before)  # no EMA step in eval mode


def test_cosine_mode_keeps_unit_codes(seed):
    vq = VectorQuantizer(20, 8, mode="cosine", backend="triton")
    x = torch.randn(64, 8, requires_grad=True)
    q, idx, commit = vq(x)
    ref_commit = 10.0 * (1 - F.cosine_similarity(x.detach(), q.detach(), dim=1)).mean()
    torch.testing.assert_close(commit.detach(), ref_commit, rtol=1e-5, atol=1e-6)
    commit.backward()
    assert x.grad.abs().sum() > 0
    torch.testing.assert_close(vq.embed.norm(dim=1), torch.ones(20), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_activations_fp32_codebook(seed, backend):
    vq = VectorQuantizer(16, 8, backend=backend)
    x = torch.randn(3, 7, 8).bfloat16().requires_grad_()
    old = vq.embed.clone()
    q, idx, commit = vq(x)
    assert q.dtype == torch.bfloat16 and commit.dtype == torch.float32
    assert torch.equal(q.detach(), old[idx].bfloat16())
    commit.backward()
    expect = 10.0 * 2 * (x.detach().float() - old[idx]) / x.numel()
    torch.testing.assert_close(x.grad.float(), expect, rtol=1e-2, atol=1e-3)


def test_dead_code_restart(seed):
    k, d, thr = 16, 6, 0.3
    vq = VectorQuantizer(k, d, decay=0.5, dead_code_threshold=thr, backend="torch")
    with torch.no_grad():
        vq.embed[2:] += 100.0  # only codes 0 and 1 are ever nearest to the data
        vq.ema_sum.copy_(vq.embed)
    x = torch.randn(200, d)
    vq(x)  # unused counts: 1 -> 0.5, still alive
    assert torch.all(vq.embed[2:].abs() > 50)
    vq(x)  # 0.5 -> 0.25 < 0.3: restarted from batch rows
    restarted = vq.embed[2:]
    assert torch.all(vq.ema_count[2:] == thr)
    assert torch.all((restarted[:, None, :] == x[None]).all(-1).any(1))  # each is a batch row
    assert torch.all(vq.ema_count[:2] > thr)
    assert not (vq.embed[:2][:, None, :] == x[None]).all(-1).any()  # live codes untouched


def test_state_dict_round_trip(seed):
    a = VectorQuantizer(32, 10, dead_code_threshold=0.2, backend="torch")
    for _ in range(3):
        a(torch.randn(50, 10))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = VectorQuantizer(32, 10, dead_code_threshold=0.2, backend="torch")
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert set(a.state_dict()) == {"embed", "ema_count", "ema_sum"}
    x = torch.randn(50, 10)
    rng = torch.get_rng_state()
    qa, ia, la = a(x)
    torch.set_rng_state(rng)  # dead-code restarts draw the same rows
    qb, ib, lb = b(x)
    assert torch.equal(ia, ib) and torch.equal(qa, qb) and torch.equal(la, lb)
    for key in ("embed", "ema_count", "ema_sum"):
        assert torch.equal(a.state_dict()[key], b.state_dict()[key])


def test_perplexity():
    assert torch.isclose(perplexity(torch.arange(64) % 16, 16), torch.tensor(16.0))
    assert torch.isclose(perplexity(torch.full((9,), 3), 16), torch.tensor(1.0))
    p = torch.tensor([0.5, 0.25, 0.25])
    expect = torch.exp(-(p * p.log()).sum())
    assert torch.isclose(perplexity(torch.tensor([[0, 0], [1, 2]]), 3), expect)


def _worker(rank, port, x, init_state, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        vq = VectorQuantizer(24, 5, decay=0.4, dead_code_threshold=0.5, backend="torch")
        vq.load_state_dict(init_state)
        torch.manual_seed(100 + rank)  # different restart draws per rank: broadcast must unify
        vq(x[rank::2])
        out[rank] = {k: v.clone() for k, v in vq.state_dict().items()}
    finally:
        torch.distributed.destroy_process_group()


def test_two_ranks_reduce_ema_statistics(seed):
    """Each rank sees half the batch; counts/sums are all-reduced, so both ranks end with the
    single-process codebook on the whole batch (and identical restarted codes)."""
    # small integers: exact distances, so each rank's chunked lookup on its half picks exactly
    # the codes the single process picks (no near-tie can round differently)
    x = torch.randint(-3, 4, (120, 5)).float()
    single = VectorQuantizer(24, 5, decay=0.4, dead_code_threshold=0.5, backend="torch")
    with torch.no_grad():
        single.embed.copy_(torch.randint(-3, 4, (24, 5)).float())
        single.embed[-4:] += 100.0  # never nearest: restarted after one step (0.4 < 0.5)
        single.ema_sum.copy_(single.embed)
    init_state = {k: v.clone() for k, v in single.state_dict().items()}
    single(x)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(port, x, init_state, out), nprocs=2, join=True)
    live = single.ema_count > 0.5  # restarted codes sit at exactly the threshold
    assert not live[-4:].any() and torch.all(single.embed[-4:].abs() < 50)
    for r in (0, 1):
        torch.testing.assert_close(out[r]["ema_count"], single.ema_count, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(out[r]["embed"][live], single.embed[live], rtol=1e-5, atol=1e-6)
    assert torch.equal(out[0]["embed"], out[1]["embed"])
