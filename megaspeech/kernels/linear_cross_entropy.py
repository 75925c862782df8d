"""Fused linear + cross-entropy: the LM loss of a large vocabulary without the [N, V] logits.

Definition (see `linear_cross_entropy_reference`, the plain path every backend reproduces):
    logits[n]  = (hidden[n] @ weight.T).float()                  (the head's matmul, then fp32)
    ce[n]      = logsumexp(logits[n]) - logits[n, labels[n]]     (0 where labels[n] == ignore_index)
    loss       = sum_n tok_weight[n] * ce[n]                     (the scalar that is backpropagated)
with weight [V / tp, H] this rank's vocabulary slice at TP>1; the max, the sum of exponentials and
the target logit are all-reduced over the tensor-parallel group per chunk, as megatron-core's
`vocab_parallel_cross_entropy` does for whole logits (labels outside this rank's slice add 0).

How: tokens are walked in chunks of `chunk_tokens`; each chunk's fp32 logits live only while its
loss and its gradient are computed (Liger-kernel's scheme), so the peak extra memory is one
[chunk, V / tp] fp32 block instead of the plain path's several [N, V / tp] fp32 tensors (the
logits, their fp32 copy, log-softmax saved for backward, the gradient). Because the loss is a
weighted *sum*, the gradient is linear in the incoming scalar gradient: d hidden and d weight are
accumulated during the forward and only scaled in the backward, so no matmul is recomputed (the
head is ~45% of the FLOPs of a 4-layer 168k-vocabulary slice). Cost: d weight is held from forward
to backward ([V / tp, H], fp32 while accumulating, then weight.dtype); for half weights and an
incoming gradient that is not a power of two the scaling rounds once more (half an ulp).

Per chunk the softmax and its gradient run in torch (one fp32 [chunk, V / tp] buffer updated in
place) or, on CUDA, in two Triton passes over the matmul's own (bf16) logits: an online max /
sum-of-exponentials / target-logit pass, then one pass writing d logits in the weight's dtype, so
no fp32 copy of the chunk exists at all. Both are tested against the plain loss.

The per-token ce (detached, fp32 [N]) is returned too, for per-modality reporting.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megaspeech.kernels._triton import interpreting, pick_backend, store_dtype, tl, triton

IGNORE_INDEX = -100  # F.cross_entropy's default; such tokens add 0 to the loss and the gradients
CHUNK_ELEMENTS = 1 << 25  # default chunk: 32M fp32 logits (128 MiB) per chunk


def _check(hidden, weight, labels, tok_weight):
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: hidden must be [N, H] and weight [V, H], got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    n = hidden.shape[0]
    if labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(f"linear_cross_entropy: labels must be int [N={n}], got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if tok_weight.shape != (n,):
        raise ValueError(f"linear_cross_entropy: tok_weight must be [N={n}], got {tuple(tok_weight.shape)}")


def _tp_info(group):
    if group is None or dist.get_world_size(group) == 1:
        return None, 0
    return group, dist.get_rank(group)


def linear_cross_entropy_reference(hidden, weight, labels, tok_weight, tp_group=None):
    """The plain path: whole logits (vocab-parallel CE of megatron-core at TP>1). Same returns."""
    _check(hidden, weight, labels, tok_weight)
    logits = (hidden @ weight.T).float()
    group, _ = _tp_info(tp_group)
    if group is not None:
        from megatron.core import tensor_parallel
        lab = labels.clamp_min(0)  # megatron has no ignore_index; zero those tokens below
        ce = tensor_parallel.vocab_parallel_cross_entropy(logits[:, None], lab[:, None])[:, 0]
        ce = torch.where(labels == IGNORE_INDEX, 0.0, ce)
    else:
        ce = F.cross_entropy(logits, labels, reduction="none", ignore_index=IGNORE_INDEX)
    return (ce * tok_weight.float()).sum(), ce.detach()


def _default_chunk(v_local: int) -> int:
    return max(16, CHUNK_ELEMENTS // max(v_local, 1))


def _chunk_torch(raw, lab, lo, tw, group, need_grad, out_dtype):
    """One chunk in torch: raw logits [c, v] (matmul dtype) -> (ce [c] fp32, d logits [c, v] in
    out_dtype or None). One fp32 [c, v] buffer, updated in place."""
    v = raw.shape[1]
    logits = raw.float()
    local = lab - lo
    in_slice = (local >= 0) & (local < v)
    tgt = logits.gather(1, local.clamp(0, v - 1)[:, None])[:, 0] * in_slice
    m = logits.amax(1)
    if group is not None:
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    logits.sub_(m[:, None]).exp_()  # now exp(logit - max)
    st = torch.stack((logits.sum(1), tgt))
    if group is not None:
        dist.all_reduce(st, group=group)
    sumexp, tgt = st[0], st[1]
    keep = lab != IGNORE_INDEX
    ce = torch.where(keep, sumexp.log() + m - tgt, 0.0)
    if not need_grad:
        return ce, None
    # d ce / d logits = softmax - onehot(target), times the token's weight
    scale = torch.where(keep, tw, 0.0)
    g = logits.mul_((scale / sumexp)[:, None])
    # minus the weight at the target column (on this rank's slice); a scatter rather than
    # nonzero() + index_put, which would wait for the device on CUDA
    g.scatter_add_(1, local.clamp(0, v - 1)[:, None], torch.where(in_slice, -scale, 0.0)[:, None])
    return ce, g.to(out_dtype)


def _chunk_triton(raw, lab, lo, tw, group, need_grad, out_dtype):
    """Same as `_chunk_torch` in two Triton passes over the raw logits (no fp32 [c, v] buffer):
    per row the online max / sum of exponentials / target logit, then d logits."""
    c, v = raw.shape
    raw = raw.contiguous()
    m = torch.empty(c, dtype=torch.float32, device=raw.device)
    se, tgt = torch.empty_like(m), torch.empty_like(m)
    lab = lab.contiguous()
    # the interpreter's small block makes the tests walk several vocabulary blocks
    bv = min(triton.next_power_of_2(v), 32 if interpreting() else 4096)
    _lse_kernel[(c,)](raw, lab, m, se, tgt, v, lo, BLOCK_V=bv)
    if group is not None:
        gm = m.clone()
        dist.all_reduce(gm, op=dist.ReduceOp.MAX, group=group)
        st = torch.stack((se * torch.exp(m - gm), tgt))  # local sums rescaled to the global max
        dist.all_reduce(st, group=group)
        m, se, tgt = gm, st[0], st[1]
    keep = lab != IGNORE_INDEX
    ce = torch.where(keep, se.log() + m - tgt, 0.0)
    if not need_grad:
        return ce, None
    scale = torch.where(keep, tw, 0.0).contiguous()
    g = torch.empty(c, v, dtype=store_dtype(out_dtype), device=raw.device)
    _ce_grad_kernel[(c, triton.cdiv(v, bv))](raw, g, lab, m, se, scale, v, lo, BLOCK_V=bv)
    return ce, g.to(out_dtype)


if triton is not None:

    @triton.jit
    def _lse_kernel(x_ptr, lab_ptr, m_ptr, s_ptr, t_ptr, V, lo, BLOCK_V: tl.constexpr):
        row = tl.program_id(0)
        base = x_ptr + row.to(tl.int64) * V
        target = tl.load(lab_ptr + row) - lo  # outside [0, V): not on this rank's slice
        # per-lane online max / sum of exponentials, combined at the end
        m = tl.full([BLOCK_V], float("-inf"), tl.float32)
        s = tl.zeros([BLOCK_V], tl.float32)
        t = tl.zeros([BLOCK_V], tl.float32)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, x)
            # lanes that have seen no value yet stay (-inf, 0): no -inf - -inf
            m_safe = tl.where(m_new != float("-inf"), m_new, 0.0)
            s = s * tl.exp(m - m_safe) + tl.exp(x - m_safe)
            m = m_new
            t += tl.where(cols == target, x, 0.0)
        mx = tl.max(m, axis=0)
        tl.store(m_ptr + row, mx)
        tl.store(s_ptr + row, tl.sum(tl.where(m != float("-inf"), s * tl.exp(m - mx), 0.0), axis=0))
        tl.store(t_ptr + row, tl.sum(t, axis=0))

    @triton.jit
    def _ce_grad_kernel(x_ptr, g_ptr, lab_ptr, m_ptr, s_ptr, scale_ptr, V, lo, BLOCK_V: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
        ok = cols < V
        off = row.to(tl.int64) * V + cols
        x = tl.load(x_ptr + off, mask=ok, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + row)
        scale = tl.load(scale_ptr + row)
        p = tl.exp(x - m) * (scale / tl.load(s_ptr + row))
        target = tl.load(lab_ptr + row) - lo
        tl.store(g_ptr + off, p - tl.where(cols == target, scale, 0.0), mask=ok)


def _mm_fp32_out(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b of half CUDA tensors with the fp32 accumulator returned unrounded (torch >= 2.8 on
    CUDA); older builds round to the input dtype first."""
    try:
        return torch.mm(a, b, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):
        return (a @ b).float()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, tok_weight, group, rank, chunk, need_grad, use_triton):
        n, h = hidden.shape
        v = weight.shape[0]
        lo = rank * v  # first vocabulary id of this rank's slice
        need_h = need_grad and ctx.needs_input_grad[0]
        need_w = need_grad and ctx.needs_input_grad[1]
        ce = torch.empty(n, dtype=torch.float32, device=hidden.device)
        gh = torch.empty_like(hidden) if need_h else None
        # fp32 accumulator over chunks for half weights (one rounding at the end, as the plain
        # path's single matmul); fp32 weights accumulate in place
        gw = torch.zeros(v, h, dtype=torch.float32, device=weight.device) if need_w else None
        tw = tok_weight.float()
        step = _chunk_triton if use_triton else _chunk_torch
        for s in range(0, n, chunk):
            hc = hidden[s:s + chunk]
            ce[s:s + chunk], g = step(hc @ weight.T, labels[s:s + chunk], lo, tw[s:s + chunk], group,
                                      need_h or need_w, weight.dtype)
            if need_h:
                gh[s:s + chunk] = g @ weight
            if need_w:  # summed over chunks in fp32: one rounding at the end, as the plain path
                if weight.is_cuda and weight.dtype != torch.float32:
                    gw.add_(_mm_fp32_out(g.T, hc.to(weight.dtype)))
                else:  # CPU (fp32 GEMM is the fast one there) or fp32 weights
                    gw.addmm_(g.T.float(), hc.float())
            del g
        ctx.save_for_backward(gh, gw.to(weight.dtype) if need_w else None)
        ctx.mark_non_differentiable(ce)
        return (ce * tw).sum(), ce

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce):
        gh, gw = ctx.saved_tensors
        # the loss is linear in its per-token terms: the stored gradients times the incoming scalar
        gh = gh.mul_(grad_loss.to(gh.dtype)) if gh is not None else None
        gw = gw.mul_(grad_loss.to(gw.dtype)) if gw is not None else None
        return gh, gw, None, None, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         tok_weight: torch.Tensor, tp_group=None, chunk_tokens: int | None = None,
                         backend: str = "auto"):
    """Weighted-sum cross-entropy of `hidden @ weight.T` computed in token chunks.

    Args:
        hidden: [N, H] float (the head's input, after any tensor-parallel region mapping).
        weight: [V / tp, H] the head weight (this rank's vocabulary slice at TP>1).
        labels: int [N] global vocabulary ids; IGNORE_INDEX (-100) tokens contribute nothing.
        tok_weight: [N] per-token factor of the loss (e.g. loss_mask * normalization); not
            differentiated.
        tp_group: the tensor-parallel process group (None or size 1: no communication).
        chunk_tokens: tokens per chunk; None: 32M logits per chunk (128 MiB fp32).
        backend: the per-chunk softmax / gradient: "auto" (Triton on CUDA: two passes over the
            matmul's logits, no fp32 copy; torch elsewhere), "triton", "torch". Same function.
    Returns:
        loss: fp32 scalar sum_n tok_weight[n] * ce[n] (differentiable w.r.t. hidden and weight;
            backward once: the stored gradients are scaled in place),
        ce: fp32 [N] per-token cross-entropy, detached.
    """
    _check(hidden, weight, labels, tok_weight)
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f"linear_cross_entropy: chunk_tokens={chunk_tokens}; use a positive int or None")
    group, rank = _tp_info(tp_group)
    chunk = chunk_tokens or _default_chunk(weight.shape[0])
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    use_triton = pick_backend(backend, hidden, "linear_cross_entropy") == "triton"
    return _LinearCrossEntropy.apply(hidden, weight, labels.long(), tok_weight.detach(), group, rank,
                                     chunk, need_grad, use_triton)
