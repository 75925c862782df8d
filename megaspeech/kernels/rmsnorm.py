"""Fused RMSNorm: one read of x, one write of y, forward and backward in one Triton kernel each.

Definition (`rms_norm_reference`, the model's RMSNorm): in fp32 whatever the input dtype,
    y = x * rsqrt(mean(x^2, -1) + eps) * weight,   returned in x.dtype
Backward (fp32, rstd = rsqrt(mean(x^2) + eps), xh = x * rstd, gw = g * weight):
    dx = rstd * (gw - xh * mean(gw * xh, -1)),   dweight = sum over rows of g * xh
The torch path is autograd through the reference (eager: ~6 kernels and 3 fp32 temporaries per
call, the "unfused elementwise" of the GPU profile); the Triton path saves only rstd [rows].

Dispatch: backend "auto" runs Triton on CUDA tensors outside torch.compile (inside a compiled
graph inductor fuses the reference itself) and the reference elsewhere; the same function.
"""
from __future__ import annotations

import torch

from megaspeech.kernels._triton import pick_backend, store_dtype, tl, triton


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(x.dtype)


if triton is not None:

    @triton.jit
    def _rms_fwd_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, M, N, eps,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        rm, cm = rows < M, cols < N
        m = rm[:, None] & cm[None, :]
        off = rows.to(tl.int64)[:, None] * N + cols[None, :]
        x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=cm, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / N + eps)
        tl.store(y_ptr + off, x * rstd[:, None] * w[None, :], mask=m)
        tl.store(rstd_ptr + rows, rstd, mask=rm)

    @triton.jit
    def _rms_bwd_kernel(g_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_ptr, M, N,
                        rows_per, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_N)
        cm = cols < N
        w = tl.load(w_ptr + cols, mask=cm, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK_N], tl.float32)
        for r0 in range(pid * rows_per, (pid + 1) * rows_per, BLOCK_M):
            rows = r0 + tl.arange(0, BLOCK_M)
            rm = rows < M
            m = rm[:, None] & cm[None, :]
            off = rows.to(tl.int64)[:, None] * N + cols[None, :]
            x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + off, mask=m, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + rows, mask=rm, other=0.0)
            xh = x * rstd[:, None]
            gw = g * w[None, :]
            dot = tl.sum(gw * xh, axis=1) / N
            tl.store(dx_ptr + off, rstd[:, None] * (gw - xh * dot[:, None]), mask=m)
            dw += tl.sum(g * xh, axis=0)
        tl.store(dw_ptr + pid.to(tl.int64) * N + cols, dw, mask=cm)  # one partial row per program


def _cfg(n: int):
    block_n = triton.next_power_of_2(n)
    return block_n, max(1, min(16, 4096 // block_n))  # ~4K elements per tile


class _RMSNormTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        shape, n = x.shape, x.shape[-1]
        x2 = x.reshape(-1, n).contiguous()
        m = x2.shape[0]
        y = torch.empty(x2.shape, dtype=store_dtype(x2.dtype), device=x2.device)
        rstd = torch.empty(m, dtype=torch.float32, device=x.device)
        block_n, block_m = _cfg(n)
        if m:
            _rms_fwd_kernel[(triton.cdiv(m, block_m),)](x2, weight, y, rstd, m, n, eps,
                                                        BLOCK_M=block_m, BLOCK_N=block_n)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.shape = shape
        return y.to(x2.dtype).view(shape)

    @staticmethod
    def backward(ctx, g):
        x2, weight, rstd = ctx.saved_tensors
        m, n = x2.shape
        g2 = g.reshape(-1, n).contiguous()
        dx = torch.empty(x2.shape, dtype=store_dtype(x2.dtype), device=x2.device)
        block_n, block_m = _cfg(n)
        # dweight: per-program partial sums over a slab of rows, then one small torch sum
        slabs = 4 * torch.cuda.get_device_properties(x2.device).multi_processor_count if x2.is_cuda else 4
        progs = max(1, min(triton.cdiv(m, block_m), slabs))
        rows_per = triton.cdiv(triton.cdiv(m, progs), block_m) * block_m
        progs = triton.cdiv(m, rows_per) if m else 1
        dw = torch.zeros(progs, n, dtype=torch.float32, device=x2.device)
        if m:
            _rms_bwd_kernel[(progs,)](g2, x2, weight, rstd, dx, dw, m, n, rows_per,
                                      BLOCK_M=block_m, BLOCK_N=block_n)
        return dx.to(x2.dtype).view(ctx.shape), dw.sum(0).to(weight.dtype), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, backend: str = "auto") -> torch.Tensor:
    """RMSNorm over the last dim. x [..., N] float, weight [N]; returns x.dtype (fp32 math).
    backend: "auto" (Triton on CUDA outside torch.compile, else torch), "triton", "torch"."""
    if x.shape[-1] != weight.shape[0]:
        raise ValueError(f"rms_norm: x has last dim {x.shape[-1]} but weight has {weight.shape[0]}")
    if backend == "auto" and torch.compiler.is_compiling():
        backend = "torch"
    if pick_backend(backend, x, "rms_norm") == "torch":
        return rms_norm_reference(x, weight, eps)
    return _RMSNormTriton.apply(x, weight, eps)
