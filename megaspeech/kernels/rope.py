"""Fused rotary position embedding (RoPE), Llama's rotate-halves and GLM's partial interleaved form.

Definition (`apply_rope_reference`, the model's function): x [..., S, hd], cos/sin [S, rot/2]
(fp32), rot = 2 * cos.shape[-1] <= hd. The first `rot` dims are rotated in fp32 in pairs
(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), the rest pass through; the result is a fresh
contiguous tensor in x.dtype. Pairs: (i, i + rot/2) for Llama (interleaved=False), (2i, 2i + 1)
for GLM (interleaved=True, which rotates half of each head: rot = hd / 2).
Backward: the inverse rotation of the fp32 upcast gradient (sin -> -sin), cast to x.dtype.

Triton reads x through its strides (the attention passes strided views of the fused QKV
output), so the rotation is one read and one write; eager torch makes ~8 passes with fp32
temporaries. Dispatch as megaspeech/kernels/rmsnorm.py: Triton on CUDA outside torch.compile.
"""
from __future__ import annotations

import torch

from megaspeech.kernels._triton import pick_backend, store_dtype, tl, triton


def apply_rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    rot = 2 * cos.shape[-1]
    xr = x[..., :rot].float()
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:
        x1, x2 = xr.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    out = out.to(x.dtype)
    return out if rot == x.shape[-1] else torch.cat((out, x[..., rot:]), dim=-1)


if triton is not None:

    @triton.jit
    def _rope_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, R, S, D1, D2, st0, st1, st2, st_s,
                     HD: tl.constexpr, HALF: tl.constexpr, INTERLEAVED: tl.constexpr,
                     INVERSE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
                     BLOCK_P: tl.constexpr):
        # rows r = (leading index l, position s); l splits into (l0, l1, l2) of sizes (., D1, D2)
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        rm = rows < R
        s = rows % S
        lead = rows // S
        l2 = lead % D2
        l1 = (lead // D2) % D1
        l0 = lead // (D2 * D1)
        base = (l0.to(tl.int64) * st0 + l1.to(tl.int64) * st1 + l2.to(tl.int64) * st2
                + s.to(tl.int64) * st_s)
        obase = rows.to(tl.int64) * HD
        i = tl.arange(0, BLOCK_H)
        im = i < HALF
        m = rm[:, None] & im[None, :]
        if INTERLEAVED:
            c1, c2 = 2 * i, 2 * i + 1
        else:
            c1, c2 = i, i + HALF
        cs = tl.load(cos_ptr + s[:, None] * HALF + i[None, :], mask=m, other=0.0)
        sn = tl.load(sin_ptr + s[:, None] * HALF + i[None, :], mask=m, other=0.0)
        if INVERSE:
            sn = -sn
        x1 = tl.load(x_ptr + base[:, None] + c1[None, :], mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + base[:, None] + c2[None, :], mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + obase[:, None] + c1[None, :], x1 * cs - x2 * sn, mask=m)
        tl.store(out_ptr + obase[:, None] + c2[None, :], x2 * cs + x1 * sn, mask=m)
        if 2 * HALF < HD:  # pass-through dims, copied in their own dtype
            p = 2 * HALF + tl.arange(0, BLOCK_P)
            pm = rm[:, None] & (p < HD)[None, :]
            v = tl.load(x_ptr + base[:, None] + p[None, :], mask=pm, other=0.0)
            tl.store(out_ptr + obase[:, None] + p[None, :], v, mask=pm)


def _launch(x, cos, sin, interleaved, inverse):
    """Rotate x [..., S, hd] (any strides, last dim contiguous) into a new contiguous tensor."""
    *lead, S, hd = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    if len(lead) > 3:  # the kernel walks three leading dims by stride; more are folded
        x = x.reshape(-1, S, hd)
        lead = [x.shape[0]]
    while len(lead) < 3:
        x = x.unsqueeze(0)
        lead = [1] + lead
    out = torch.empty(*lead, S, hd, dtype=store_dtype(x.dtype), device=x.device)
    R = lead[0] * lead[1] * lead[2] * S
    half = cos.shape[-1]
    block_h = triton.next_power_of_2(half)
    block_p = triton.next_power_of_2(max(hd - 2 * half, 1))
    block_r = max(1, min(64, 4096 // block_h))
    if R:
        _rope_kernel[(triton.cdiv(R, block_r),)](
            x, cos, sin, out, R, S, lead[1], lead[2], x.stride(0), x.stride(1), x.stride(2), x.stride(3),
            HD=hd, HALF=half, INTERLEAVED=interleaved, INVERSE=inverse,
            BLOCK_R=block_r, BLOCK_H=block_h, BLOCK_P=block_p)
    return out.to(x.dtype)


class _RopeTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin, interleaved):
        ctx.save_for_backward(cos, sin)
        ctx.interleaved, ctx.shape = interleaved, x.shape
        return _launch(x, cos, sin, interleaved, False).view(x.shape)

    @staticmethod
    def backward(ctx, g):
        cos, sin = ctx.saved_tensors
        return _launch(g, cos, sin, ctx.interleaved, True).view(ctx.shape), None, None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool,
               backend: str = "auto") -> torch.Tensor:
    """x [..., S, hd] float; cos/sin fp32 [S, rot/2] (rot <= hd), or any shape that broadcasts
    against x[..., :rot/2] (e.g. per-sequence positions [B, 1, S, rot/2] while decoding: those take
    the torch path). Returns a new contiguous tensor in x.dtype.
    backend: "auto" (Triton on CUDA outside torch.compile), "triton", "torch"."""
    if cos.shape != sin.shape or 2 * cos.shape[-1] > x.shape[-1]:
        raise ValueError(f"apply_rope: cos/sin must be [..., S, rot/2] with rot <= {x.shape[-1]}, "
                         f"got {tuple(cos.shape)} and {tuple(sin.shape)}")
    tables = cos.dim() == 2 and cos.shape[0] == x.shape[-2]  # the kernel's layout: one row per position
    if backend == "auto" and (torch.compiler.is_compiling() or not tables):
        backend = "torch"
    if pick_backend(backend, x, "apply_rope") == "torch":
        return apply_rope_reference(x, cos, sin, interleaved)
    if not tables:
        raise ValueError(f"apply_rope: backend='triton' needs cos/sin [S={x.shape[-2]}, rot/2], got "
                         f"{tuple(cos.shape)}; use backend='auto'")
    return _RopeTriton.apply(x, cos.float().contiguous(), sin.float().contiguous(), interleaved)
