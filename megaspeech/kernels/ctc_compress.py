"""CTC compression (the speech-to-LM bridge of arXiv 2312.03668): one vector per run of frames
that share a CTC label, blank runs dropped (mode "remove_blank") or kept ("merge").

Definition (see `ctc_compress_reference`): for each sequence b, frames t < lengths[b] are split
into maximal runs of equal label; every kept run becomes mean(h[run]) (reduce="mean") or
sum(w h[run]) / sum(w[run]) (reduce="weighted"; a zero weight sum divides by 1 instead). Output
rows are the kept runs in order, padded with zeros to T' = max(new_lengths).

Backends: a Triton forward (one program per output row x D tile) and backward (one program per
frame tile: grad_h = grad_out[run] * w / sum_w, grad_w = <grad_out[run], h - out[run]> / sum_w);
on CPU a vectorised torch path (one weighted embedding_bag over the kept frames) with the same
backward in torch. Arithmetic in fp32 (fp64 for fp64 input on the torch paths).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from megaspeech.kernels._triton import interpreting, pick_backend, tl, triton

MODES = ("remove_blank", "merge")
REDUCES = ("mean", "weighted")


def _prepare(h, labels, lengths, blank, mode, reduce, probs):
    """Validate; return int64 labels [B, T] and weights [B, T] (None for mean)."""
    if mode not in MODES:
        raise ValueError(f"ctc_compress: mode={mode!r}; use one of {MODES}")
    if reduce not in REDUCES:
        raise ValueError(f"ctc_compress: reduce={reduce!r}; use one of {REDUCES}")
    if h.dim() != 3:
        raise ValueError(f"ctc_compress: h must be [B, T, D], got {tuple(h.shape)}")
    b, t, _ = h.shape
    logits = None
    if labels.dim() == 3 and labels.is_floating_point():
        logits, labels = labels, labels.argmax(-1)  # first maximum on ties
    elif labels.dim() != 2 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"ctc_compress: labels must be int64 [B, T] or float logits [B, T, V], "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    if tuple(labels.shape[:2]) != (b, t):
        raise ValueError(f"ctc_compress: labels {tuple(labels.shape)} do not match h {tuple(h.shape)}")
    if lengths.shape != (b,) or lengths.is_floating_point():
        raise ValueError(f"ctc_compress: lengths must be int [B={b}], "
                         f"got {lengths.dtype} {tuple(lengths.shape)}")
    if b and not lengths.is_cuda and (int(lengths.min()) < 0 or int(lengths.max()) > t):
        raise ValueError(f"ctc_compress: lengths must lie in [0, T={t}], got {lengths.tolist()}")
    if b and lengths.is_cuda:  # checked on the device: no host synchronization
        torch._assert_async(((lengths >= 0) & (lengths <= t)).all(),
                            f"ctc_compress: lengths must lie in [0, T={t}]")
    w = None
    if reduce == "weighted":
        if probs is None:
            if logits is None:
                raise ValueError("ctc_compress: reduce='weighted' needs probs [B, T] or logits")
            w = torch.softmax(logits.float(), dim=-1).amax(-1)  # confidence of the argmax label
        else:
            if probs.shape != (b, t):
                raise ValueError(f"ctc_compress: probs must be [B, T]={b, t}, got {tuple(probs.shape)}")
            w = probs
    return labels.long(), w


def ctc_compress_reference(h, labels, lengths, blank: int,
                           mode: Literal["remove_blank", "merge"] = "remove_blank",
                           reduce: Literal["mean", "weighted"] = "mean", probs=None):
    """The definition: a Python loop over runs. Same arguments/returns as `ctc_compress`."""
    labels, w = _prepare(h, labels, lengths, blank, mode, reduce, probs)
    acc = torch.promote_types(h.dtype, torch.float32)
    lab, lens = labels.tolist(), lengths.tolist()
    rows = []
    for b in range(h.shape[0]):
        out, t = [], 0
        while t < lens[b]:
            e = t + 1
            while e < lens[b] and lab[b][e] == lab[b][t]:
                e += 1
            if mode == "merge" or lab[b][t] != blank:
                seg = h[b, t:e].to(acc)
                if w is None:
                    out.append(seg.mean(0))
                else:
                    ws = w[b, t:e].to(acc)
                    den = ws.sum()
                    out.append((ws[:, None] * seg).sum(0) / torch.where(den != 0, den, 1.0))
            t = e
        rows.append(out)
    new_len = torch.tensor([len(r) for r in rows], dtype=torch.int64, device=h.device)
    tmax = max([len(r) for r in rows], default=0)
    out = h.new_zeros(h.shape[0], tmax, h.shape[2], dtype=acc)
    if tmax:  # stack keeps autograd; pad rows stay zero
        out = torch.stack([torch.stack(r + [h.new_zeros(h.shape[2], dtype=acc)] * (tmax - len(r)))
                           for r in rows])
    return out.to(h.dtype), new_len


def _runs(labels, lengths, blank, mode):
    """(output position of each frame within its sequence, -1 if dropped [B, T]; run-start flags
    [B, T]; kept-run-start flags [B, T]; new lengths [B])."""
    b, t = labels.shape
    pos = torch.arange(t, device=labels.device)
    valid = pos[None, :] < lengths[:, None]
    start = valid.clone()
    start[:, 1:] &= labels[:, 1:] != labels[:, :-1]
    keep = valid & (labels != blank) if mode == "remove_blank" else valid
    kept_start = start & keep  # a run is kept or dropped as a whole: one label per run
    seg = torch.cumsum(kept_start, 1) - 1
    return torch.where(keep, seg, -1), start, kept_start, kept_start.sum(1)


class _CTCCompressTorch(torch.autograd.Function):
    """CPU path: the forward is one weighted `embedding_bag` over h's kept frames (bag = run,
    weights w / sum_w), so h is read once and nothing of size B x T x D is allocated; measured
    2-3x faster here than a sparse (runs x frames) @ h product, 5-10x faster than index_add_.
    The backward gathers grad rows per kept frame."""

    @staticmethod
    def forward(ctx, h, w, frame_row, n_rows):
        b, t, d = h.shape
        acc = torch.promote_types(h.dtype, torch.float32)
        hf = h.reshape(b * t, d).to(acc)
        cols = (frame_row >= 0).nonzero().squeeze(1)  # kept frames, in order
        rows = frame_row[cols]  # their output rows: non-decreasing, so (rows, cols) is sorted
        if w is None:
            wk = torch.ones(cols.numel(), dtype=acc, device=h.device)
        else:
            wk = w.reshape(-1)[cols].to(acc)
        den = torch.zeros(n_rows, dtype=acc, device=h.device).index_add_(0, rows, wk)
        den = torch.where(den != 0, den, torch.ones_like(den))  # zero weight sum: divide by 1
        scale = wk / den[rows]
        out = hf.new_zeros(0, d)
        if n_rows:  # bag r = the kept frames of output row r (empty for padding rows -> zeros)
            offsets = torch.zeros(n_rows, dtype=torch.int64, device=h.device)
            offsets[1:] = torch.bincount(rows, minlength=n_rows)[:-1].cumsum(0)
            out = F.embedding_bag(cols, hf, offsets, mode="sum", per_sample_weights=scale)
        ctx.save_for_backward(hf, w, out, rows, cols, den, scale)
        ctx.shape = (b, t, d, h.dtype)
        return out

    @staticmethod
    def backward(ctx, g):
        hf, w, out, rows, cols, den, scale = ctx.saved_tensors
        b, t, d, dtype = ctx.shape
        g = g.to(out.dtype)
        gk = g.index_select(0, rows)  # grad of each kept frame's run
        gh = torch.zeros(b * t, d, dtype=out.dtype, device=g.device)
        gh.index_copy_(0, cols, gk * scale[:, None])
        gw = None
        if w is not None and ctx.needs_input_grad[1]:
            # d out_r / d w_t = (h_t - out_r) / sum_w
            dots = (gk * hf.index_select(0, cols)).sum(1) - (g * out).sum(1)[rows]
            gw = torch.zeros(b * t, dtype=out.dtype, device=g.device)
            gw.index_copy_(0, cols, dots / den[rows])
            gw = gw.reshape(b, t).to(w.dtype)
        return gh.reshape(b, t, d).to(dtype), gw, None, None


def _compress_torch(h, w, labels, lengths, blank, mode, pad_to):
    b, t, d = h.shape
    seg, _, _, new_len = _runs(labels, lengths, blank, mode)
    tmax = t if pad_to == "input" else (int(new_len.max()) if b else 0)
    base = torch.arange(b, device=h.device)[:, None] * tmax
    frame_row = torch.where(seg >= 0, base + seg, -1).reshape(-1)
    out = _CTCCompressTorch.apply(h, w, frame_row, b * tmax)
    return out.reshape(b, tmax, d).to(h.dtype), new_len


if triton is not None:

    @triton.jit
    def _ctc_fwd_kernel(h_ptr, w_ptr, run_frame_ptr, run_end_ptr, out_ptr, den_ptr, D,
                        HAS_W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        r = tl.program_id(0)  # one output row b * T' + j (a kept run, or padding: empty span)
        ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        dm = ds < D
        f0 = tl.load(run_frame_ptr + r)  # flat frame index b * T + t of the run's first frame
        f1 = tl.load(run_end_ptr + r)  # one past its last frame
        acc = tl.zeros([BLOCK_D], tl.float32)
        wsum = tl.zeros([BLOCK_T], tl.float32)
        for fs in range(f0, f1, BLOCK_T):
            fr = fs + tl.arange(0, BLOCK_T)
            fm = fr < f1
            ht = tl.load(h_ptr + fr.to(tl.int64)[:, None] * D + ds[None, :],
                         mask=fm[:, None] & dm[None, :], other=0.0).to(tl.float32)
            if HAS_W:
                wt = tl.load(w_ptr + fr, mask=fm, other=0.0).to(tl.float32)
            else:
                wt = tl.where(fm, 1.0, 0.0)
            acc += tl.sum(ht * wt[:, None], axis=0)
            wsum += wt
        den = tl.sum(wsum, axis=0)
        den = tl.where(den != 0.0, den, 1.0)
        tl.store(out_ptr + r.to(tl.int64) * D + ds, acc / den, mask=dm)
        tl.store(den_ptr + r, den)

    @triton.jit
    def _ctc_bwd_kernel(gout_ptr, h_ptr, w_ptr, out_ptr, row_ptr, den_ptr, gh_ptr, gw_ptr, NF, D,
                        HAS_W: tl.constexpr, NEED_GW: tl.constexpr,
                        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        fr = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # flat frames b * T + t
        fm = fr < NF
        fr64 = fr.to(tl.int64)
        row = tl.load(row_ptr + fr, mask=fm, other=-1)  # output row of the frame's run, -1 dropped
        kept = fm & (row >= 0)
        row64 = tl.where(kept, row, 0).to(tl.int64)
        den = tl.load(den_ptr + row64, mask=kept, other=1.0)
        if HAS_W:
            wt = tl.load(w_ptr + fr, mask=fm, other=0.0).to(tl.float32)
        else:
            wt = tl.full([BLOCK_T], 1.0, tl.float32)
        scale = wt / den
        gw = tl.zeros([BLOCK_T], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            dm = ds[None, :] < D
            g = tl.load(gout_ptr + row64[:, None] * D + ds[None, :], mask=kept[:, None] & dm,
                        other=0.0).to(tl.float32)
            tl.store(gh_ptr + fr64[:, None] * D + ds[None, :], g * scale[:, None], mask=fm[:, None] & dm)
            if NEED_GW:
                ht = tl.load(h_ptr + fr64[:, None] * D + ds[None, :], mask=kept[:, None] & dm,
                             other=0.0).to(tl.float32)
                o = tl.load(out_ptr + row64[:, None] * D + ds[None, :], mask=kept[:, None] & dm,
                            other=0.0)
                gw += tl.sum(g * (ht - o), axis=1)
        if NEED_GW:
            tl.store(gw_ptr + fr, gw / den, mask=fm)


def _blocks():
    return (64, 128) if interpreting() else (16, 128)


class _CTCCompressTriton(torch.autograd.Function):
    """Forward and backward are both Triton kernels; run metadata comes from `_runs`."""

    @staticmethod
    def forward(ctx, h, w, labels, lengths, blank, mode, pad_to):
        b, t, d = h.shape
        h = h.contiguous()
        w = w.contiguous() if w is not None else None
        seg, start, kept_start, new_len = _runs(labels, lengths, blank, mode)
        # "input": T' = T, an upper bound of every new length, known without reading the device
        tmax = t if pad_to == "input" else (int(new_len.max()) if b else 0)
        pos = torch.arange(t, device=h.device)
        # a run ends at the next run start (blank or not) or at the sequence length
        nxt = torch.where(start, pos, lengths[:, None]).flip(1).cummin(1).values.flip(1)
        end = torch.cat([nxt[:, 1:], lengths[:, None]], 1)
        base = torch.arange(b, device=h.device)[:, None]
        # one [first frame, end) span per output row b * T' + j, scattered from the kept run
        # starts (fixed-size, so no nonzero()/boolean indexing and no synchronization); rows
        # past a sequence's new length keep the empty span [0, 0) and are written as zeros
        n_rows = b * tmax
        row = torch.where(kept_start, base * tmax + seg, n_rows).reshape(-1)  # n_rows: a dump slot
        run_frame = torch.zeros(n_rows + 1, dtype=torch.int64, device=h.device)
        run_end = torch.zeros(n_rows + 1, dtype=torch.int64, device=h.device)
        run_frame.scatter_(0, row, (base * t + pos).reshape(-1))
        run_end.scatter_(0, row, (base * t + end).reshape(-1))
        out = torch.empty(n_rows, d, device=h.device)
        den = torch.empty(n_rows, device=h.device)
        bt, bd = _blocks()
        if n_rows and d:
            _ctc_fwd_kernel[(n_rows, triton.cdiv(d, bd))](
                h, w if w is not None else h, run_frame, run_end, out, den, d,
                HAS_W=w is not None, BLOCK_T=bt, BLOCK_D=bd)
        elif n_rows:
            den.fill_(1.0)
        frame_row = torch.where(seg >= 0, base * tmax + seg, -1).to(torch.int32).contiguous()
        ctx.save_for_backward(h, w, out, frame_row, den)
        ctx.shape = (b, t, d, tmax)
        ctx.mark_non_differentiable(new_len)
        return out.reshape(b, tmax, d).to(h.dtype), new_len

    @staticmethod
    def backward(ctx, grad_out, _grad_len):
        h, w, out, frame_row, den = ctx.saved_tensors
        b, t, d, tmax = ctx.shape
        need_gw = w is not None and ctx.needs_input_grad[1]
        gw = torch.zeros(b, t, dtype=torch.float32, device=h.device) if need_gw else None
        if tmax == 0 or d == 0:  # every frame was dropped (or D = 0): zero gradients
            gh = torch.zeros_like(h)
        else:
            gh = torch.empty_like(h)
            bt, bd = _blocks()
            _ctc_bwd_kernel[(triton.cdiv(b * t, bt),)](
                grad_out.contiguous(), h, w if w is not None else h, out, frame_row, den, gh,
                gw if need_gw else den, b * t, d,
                HAS_W=w is not None, NEED_GW=need_gw, BLOCK_T=bt, BLOCK_D=bd)
        return gh, (gw.to(w.dtype) if need_gw else None), None, None, None, None, None


def ctc_compress(h: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, blank: int,
                 mode: Literal["remove_blank", "merge"] = "remove_blank",
                 reduce: Literal["mean", "weighted"] = "mean", probs: torch.Tensor | None = None,
                 backend: Literal["auto", "triton", "torch"] = "auto",
                 pad_to: Literal["max", "input"] = "max"):
    """Compress frames to one vector per CTC label run.

    Args:
        h: [B, T, D] float frame features (differentiable).
        labels: int64 [B, T] CTC label per frame, or float logits [B, T, V] (argmax taken).
        lengths: int [B], valid frames per sequence, each in [0, T].
        blank: the blank label id.
        mode: "remove_blank" drops runs of `blank`; "merge" keeps them as one vector each.
        reduce: "mean" or "weighted" (weights `probs` [B, T], differentiable; by default the
            softmax probability of the argmax label when logits are given).
        backend: "auto" (Triton on CUDA, torch otherwise), "triton", "torch".
        pad_to: "max": T' = max(new_lengths), which on CUDA costs one host synchronization to
            size the output; "input": T' = T (an upper bound: new_lengths <= lengths <= T), so
            the CUDA path never waits for the device. Rows below T' are the same either way.
    Returns:
        h_out [B, T', D] in h.dtype with zero padding, new_lengths int64 [B];
        T' per `pad_to` (with "max", 0 when every run is dropped).
    """
    if pad_to not in ("max", "input"):
        raise ValueError(f"ctc_compress: pad_to={pad_to!r}; use 'max' or 'input'")
    labels, w = _prepare(h, labels, lengths, blank, mode, reduce, probs)
    lengths = lengths.to(device=h.device, dtype=torch.int64)
    labels = labels.to(h.device)
    if pick_backend(backend, h, "ctc_compress") == "torch":
        return _compress_torch(h, w, labels, lengths, blank, mode, pad_to)
    return _CTCCompressTriton.apply(h, w, labels, lengths, blank, mode, pad_to)
