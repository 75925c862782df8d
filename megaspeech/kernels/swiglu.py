"""Fused SwiGLU activation: silu(gate) * up in one pass, and its backward in one pass.

Definition (`swiglu_reference`, the model's eager code): y = silu(gate) * up. In fp32 the Triton
kernel computes the same; for bf16/fp16 inputs it computes in fp32 and rounds once, where eager
torch also rounds silu(gate) before the product: the two then differ by at most about one unit
in the last place, the fused result being the closer to the exact value. Backward, with
sg = sigmoid(gate):
    d gate = g * up * sg * (1 + gate * (1 - sg)),   d up = g * silu(gate)
The Triton backward recomputes sigmoid from gate (nothing but the inputs is saved); eager torch
keeps silu(gate) and runs ~5 elementwise kernels. Dispatch as megaspeech/kernels/rmsnorm.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from megaspeech.kernels._triton import pick_backend, store_dtype, tl, triton


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


if triton is not None:

    @triton.jit
    def _swiglu_fwd_kernel(g_ptr, u_ptr, y_ptr, N, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < N
        a = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
        b = tl.load(u_ptr + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs, a * tl.sigmoid(a) * b, mask=m)

    @triton.jit
    def _swiglu_bwd_kernel(go_ptr, g_ptr, u_ptr, dg_ptr, du_ptr, N, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < N
        go = tl.load(go_ptr + offs, mask=m, other=0.0).to(tl.float32)
        a = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
        b = tl.load(u_ptr + offs, mask=m, other=0.0).to(tl.float32)
        sg = tl.sigmoid(a)
        tl.store(dg_ptr + offs, go * b * sg * (1.0 + a * (1.0 - sg)), mask=m)
        tl.store(du_ptr + offs, go * a * sg, mask=m)


def _block():
    return 4096


class _SwiGLUTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        gate, up = gate.contiguous(), up.contiguous()
        y = torch.empty(gate.shape, dtype=store_dtype(gate.dtype), device=gate.device)
        n = gate.numel()
        if n:
            _swiglu_fwd_kernel[(triton.cdiv(n, _block()),)](gate, up, y, n, BLOCK=_block())
        ctx.save_for_backward(gate, up)
        return y.to(gate.dtype)

    @staticmethod
    def backward(ctx, go):
        gate, up = ctx.saved_tensors
        go = go.contiguous()
        dg, du = (torch.empty(gate.shape, dtype=store_dtype(gate.dtype), device=gate.device) for _ in range(2))
        n = gate.numel()
        if n:
            _swiglu_bwd_kernel[(triton.cdiv(n, _block()),)](go, gate, up, dg, du, n, BLOCK=_block())
        return dg.to(gate.dtype), du.to(gate.dtype)


def swiglu(gate: torch.Tensor, up: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """silu(gate) * up, same shape and dtype as gate (Triton: fp32 math, one rounding).
    backend: "auto" (Triton on CUDA outside torch.compile), "triton", "torch"."""
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"swiglu: gate {gate.dtype} {tuple(gate.shape)} and up {up.dtype} "
                         f"{tuple(up.shape)} must have the same shape and dtype")
    if backend == "auto" and torch.compiler.is_compiling():
        backend = "torch"
    if pick_backend(backend, gate, "swiglu") == "torch":
        return swiglu_reference(gate, up)
    return _SwiGLUTriton.apply(gate, up)
