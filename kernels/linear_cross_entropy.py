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
to backward ([V / tp, H], fp32 while accumulating, then weight.dtype).

The per-token ce (detached, fp32 [N]) is returned too, for per-modality reporting.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

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


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, tok_weight, group, rank, chunk, need_grad):
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
        for s in range(0, n, chunk):
            hc, lab = hidden[s:s + chunk], labels[s:s + chunk]
            logits = (hc @ weight.T).float()  # [c, v]: the only chunk-sized buffer (reused in place)
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
            ce[s:s + chunk] = torch.where(keep, sumexp.log() + m - tgt, 0.0)
            if not (need_h or need_w):
                continue
            # d ce / d logits = softmax - onehot(target), times the token's weight
            scale = torch.where(keep, tw[s:s + chunk], 0.0)
            g = logits.mul_((scale / sumexp)[:, None])
            # minus the weight at the target column (on this rank's slice); a scatter rather than
            # nonzero() + index_put, which would wait for the device on CUDA
            g.scatter_add_(1, local.clamp(0, v - 1)[:, None], torch.where(in_slice, -scale, 0.0)[:, None])
            g = g.to(weight.dtype)
            if need_h:
                gh[s:s + chunk] = g @ weight
            if need_w:
                if weight.dtype == torch.float32:
                    gw.addmm_(g.T, hc.float())
                else:
                    gw.add_(g.T @ hc.to(weight.dtype))
            del logits, g
        ctx.save_for_backward(gh, gw.to(weight.dtype) if need_w else None)
        ctx.mark_non_differentiable(ce)
        return (ce * tw).sum(), ce

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce):
        gh, gw = ctx.saved_tensors
        # the loss is linear in its per-token terms: the stored gradients times the incoming scalar
        gh = gh.mul_(grad_loss.to(gh.dtype)) if gh is not None else None
        gw = gw.mul_(grad_loss.to(gw.dtype)) if gw is not None else None
        return gh, gw, None, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         tok_weight: torch.Tensor, tp_group=None, chunk_tokens: int | None = None):
    """Weighted-sum cross-entropy of `hidden @ weight.T` computed in token chunks.

    Args:
        hidden: [N, H] float (the head's input, after any tensor-parallel region mapping).
        weight: [V / tp, H] the head weight (this rank's vocabulary slice at TP>1).
        labels: int [N] global vocabulary ids; IGNORE_INDEX (-100) tokens contribute nothing.
        tok_weight: [N] per-token factor of the loss (e.g. loss_mask * normalization); not
            differentiated.
        tp_group: the tensor-parallel process group (None or size 1: no communication).
        chunk_tokens: tokens per chunk; None: 32M logits per chunk (128 MiB fp32).
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
    return _LinearCrossEntropy.apply(hidden, weight, labels.long(), tok_weight.detach(), group, rank,
                                     chunk, need_grad)
