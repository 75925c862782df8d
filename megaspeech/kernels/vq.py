"""Training-side vector quantiser on top of the fused lookup: straight-through estimator,
commitment loss from the fused min distances, EMA codebook (decay 0.99, as GLM-4-Voice's speech
tokenizer) with a fused per-code count/sum accumulation, and dead-code restart.

State lives in buffers (embed, ema_count, ema_sum), so `state_dict()` round-trips and an EMA
step resumes exactly.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from megaspeech.kernels._triton import interpreting, pick_backend, tl, triton
from megaspeech.kernels.vq_lookup import MODES, vq_lookup


def code_stats_reference(indices: torch.Tensor, x: torch.Tensor, codebook_size: int):
    """Per-code usage count and vector sum.

    indices int64 [N], x [N, D] -> (counts float32 [K], sums float32 [K, D])."""
    counts = torch.bincount(indices, minlength=codebook_size).float()
    sums = torch.zeros(codebook_size, x.shape[1], device=x.device).index_add_(0, indices, x.float())
    return counts, sums


if triton is not None:

    @triton.jit
    def _code_stats_kernel(idx_ptr, x_ptr, count_ptr, sum_ptr, N, D, stride_x,
                           BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        # one pass over x: each program scatters a [BLOCK_N, BLOCK_D] tile into its codes' sums
        pid_n, pid_d = tl.program_id(0), tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        ok = rows < N
        rows64 = rows.to(tl.int64)
        code = tl.load(idx_ptr + rows64, mask=ok, other=0)
        ds = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        m = ok[:, None] & (ds < D)[None, :]
        xt = tl.load(x_ptr + rows64[:, None] * stride_x + ds[None, :], mask=m, other=0.0).to(tl.float32)
        tl.atomic_add(sum_ptr + code[:, None] * D + ds[None, :], xt, mask=m)
        if pid_d == 0:  # count each row once, not once per column tile
            tl.atomic_add(count_ptr + code, tl.full([BLOCK_N], 1.0, tl.float32), mask=ok)


def code_stats(indices: torch.Tensor, x: torch.Tensor, codebook_size: int, backend: str = "auto"):
    """Fused count/sum per code (Triton atomics on CUDA, bincount/index_add_ otherwise).

    indices int64 [N] in [0, K), x [N, D] float. Returns counts float32 [K], sums float32 [K, D].
    Atomic float adds make the Triton sums order-dependent in the last bits, not in value.
    """
    if pick_backend(backend, x, "code_stats") == "torch":
        return code_stats_reference(indices, x, codebook_size)
    n, d = x.shape
    counts = torch.zeros(codebook_size, device=x.device)
    sums = torch.zeros(codebook_size, d, device=x.device)
    if n:
        x = x.contiguous()
        bn, bd = (128, 128) if interpreting() else (64, 128)
        grid = (triton.cdiv(n, bn), triton.cdiv(d, bd))
        _code_stats_kernel[grid](indices.contiguous(), x, counts, sums, n, d, x.stride(0),
                                 BLOCK_N=bn, BLOCK_D=bd)
    return counts, sums


def perplexity(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """exp(entropy) of code usage in `indices` (any shape, int64): 1 = one code, K = uniform."""
    counts = torch.bincount(indices.reshape(-1), minlength=codebook_size).float()
    p = counts / counts.sum().clamp_min(1.0)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


class _Commitment(torch.autograd.Function):
    """weight * mean_n(min_dist_n) / D, i.e. weight * F.mse_loss(x, sg(q)), with its value
    taken from the fused distances (no second pass) and gradient 2 weight (x - q) / (N D)."""

    @staticmethod
    def forward(ctx, x, q, min_dist, weight):
        ctx.save_for_backward(x, q)
        ctx.weight = weight
        return weight * min_dist.mean() / x.shape[1]

    @staticmethod
    def backward(ctx, grad):
        x, q = ctx.saved_tensors
        g = (x.float() - q.float()) * (2.0 * ctx.weight / x.numel()) * grad
        return g.to(x.dtype), None, None, None


class VectorQuantizer(nn.Module):
    """EMA vector quantiser. forward(x [..., D]) -> (quantized_st [..., D] in x.dtype,
    indices int64 [...], commit_loss scalar float32).

    - quantized_st = q + (x - sg(x)): exactly q's values, identity gradient to x (straight-
      through; the usual x + sg(q - x) would be off by a rounding of q - x).
    - commit_loss (l2) = commitment_weight * mean ||x - sg(q)||^2 / D = weight * F.mse_loss;
      (cosine) = weight * mean(1 - cos(x, sg(q))). Differentiable w.r.t. x only.
    - In training mode the codebook follows an EMA of the assigned vectors (Laplace-smoothed
      counts, eps), summed over `process_group` when torch.distributed is initialised; codes whose
      EMA count falls below dead_code_threshold are restarted from random batch vectors
      (0 disables). The codebook is never a gradient parameter.
    """

    def __init__(self, codebook_size: int, dim: int, decay: float = 0.99, eps: float = 1e-5,
                 commitment_weight: float = 10.0, mode: str = "l2",
                 dead_code_threshold: float = 0.0, process_group=None, backend: str = "auto"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"VectorQuantizer: mode={mode!r}; use one of {MODES}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"VectorQuantizer: decay={decay}; use a value in [0, 1)")
        self.codebook_size, self.dim, self.decay, self.eps = codebook_size, dim, decay, eps
        self.commitment_weight, self.mode = commitment_weight, mode
        self.dead_code_threshold = dead_code_threshold
        self.process_group, self.backend = process_group, backend
        embed = torch.randn(codebook_size, dim)
        if mode == "cosine":
            embed = F.normalize(embed, dim=1)
        self.register_buffer("embed", embed)
        self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("ema_sum", embed.clone())

    @property
    def codebook(self) -> torch.Tensor:
        return self.embed

    def forward(self, x: torch.Tensor):
        if x.shape[-1] != self.dim:
            raise ValueError(f"VectorQuantizer: last dim {x.shape[-1]} != codebook dim {self.dim}")
        flat = x.reshape(-1, self.dim)
        idx, q, min_dist = vq_lookup(flat.detach(), self.embed, self.mode, backend=self.backend)
        q = q.to(x.dtype)
        quantized = q + (flat - flat.detach())  # straight-through, and exactly q's values
        if flat.shape[0] == 0:
            commit = flat.float().sum() * 0.0
        elif self.mode == "l2":
            commit = _Commitment.apply(flat, q, min_dist, self.commitment_weight)
        else:
            cos = F.cosine_similarity(flat.float(), q.detach().float(), dim=1, eps=1e-12)
            commit = self.commitment_weight * (1.0 - cos).mean()
        if self.training:
            self.ema_update(flat.detach(), idx)
        return quantized.reshape(x.shape), idx.reshape(x.shape[:-1]), commit

    def _group_active(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @torch.no_grad()
    def ema_update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        """One EMA step from rows flat [N, D] assigned to codes idx [N] (then dead-code restart)."""
        counts, sums = code_stats(idx, flat, self.codebook_size, backend=self.backend)
        if self._group_active():  # every rank must end with the same codebook
            dist.all_reduce(counts, group=self.process_group)
            dist.all_reduce(sums, group=self.process_group)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        n = self.ema_count.sum()
        # Laplace smoothing keeps unused codes finite (no division by ~0)
        smoothed = (self.ema_count + self.eps) / (n + self.codebook_size * self.eps) * n
        embed = self.ema_sum / smoothed[:, None]
        self.embed.copy_(F.normalize(embed, dim=1) if self.mode == "cosine" else embed)
        if self.dead_code_threshold > 0:
            self._restart_dead_codes(flat)

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        dead = self.ema_count < self.dead_code_threshold
        n_dead = int(dead.sum())  # same on every rank: counts were all-reduced
        if n_dead == 0:
            return
        if flat.shape[0]:
            new = flat[torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)].float()
        else:
            new = self.embed[dead].clone()
        if self.mode == "cosine":
            new = F.normalize(new, dim=1)
        if self._group_active():  # the same replacement vectors everywhere
            src = 0 if self.process_group is None else dist.get_global_rank(self.process_group, 0)
            dist.broadcast(new, src=src, group=self.process_group)
        self.embed[dead] = new
        # restarted codes start as if they had been seen threshold times at this vector
        self.ema_count[dead] = self.dead_code_threshold
        self.ema_sum[dead] = new * self.dead_code_threshold

    def perplexity(self, indices: torch.Tensor) -> torch.Tensor:
        """Code-usage perplexity of `indices` (see module function `perplexity`)."""
        return perplexity(indices, self.codebook_size)
