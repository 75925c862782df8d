"""fp32 VQ lookup on tensor cores with exact fp32 results: a bf16 candidate search, then an fp32
re-ranking of the few candidates, then an exact fallback for rows the bound cannot settle.

Why: fp32 inputs must give the fp32 argmin of megaspeech/kernels/vq_lookup.py's definition, but an "ieee"
fp32 dot runs on CUDA cores (0.46x cdist on an H100). Here:
1. `_candidates_kernel`: scores from bf16-rounded x and codes on tensor cores (fp32 accumulate),
   keeping the TOP_M lowest approximate scores of each row (and their codes) in registers.
2. `_rerank_kernel`: the exact fp32 score (same formula as the reference: ||c||^2 - 2 x.c, or
   -x.c / ||c||) of each candidate; the lowest wins, ties to the lowest index. A row is flagged
   when the rounding bound cannot prove the true winner is among its candidates: the worst kept
   approximate score lies within `margin` of the best one (with K > TOP_M).
3. Flagged rows rerun through the exact "ieee" kernel of vq_lookup.py (unflagged row blocks exit
   at once), so no host synchronization is needed to decide.

The bound: rounding x and c to bf16 changes each product x_i c_i by at most (2u + u^2)|x_i c_i|,
u = 2^-7 (covers round-to-nearest, 2^-8, and the interpreter's truncation, 2^-7); with fp32
accumulation over D terms (D 2^-23, generous) and Cauchy-Schwarz, |approx - exact| of a score is
at most e_n = 2 (2u + u^2 + D 2^-23) ||x_n|| max_k ||c_k|| (the code term factor for cosine is
||c_k|| / ||c_k|| = 1). If every code outside the kept set has approx >= worst kept > best + 2 e_n,
its exact score exceeds the best candidate's: the winner is a candidate.
"""
from __future__ import annotations

import torch

from megaspeech.kernels._triton import interpreting, tl, triton

TOP_M = 4
_U = 2.0 ** -7


if triton is not None:

    @triton.jit
    def _candidates_kernel(x_ptr, c_ptr, term_ptr, cand_v_ptr, cand_i_ptr, N, K, D, stride_x, stride_c,
                           COSINE: tl.constexpr, EMULATE_BF16: tl.constexpr, TOP: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        rows64 = rows.to(tl.int64)
        slot = tl.arange(0, TOP)
        top_v = tl.full([BLOCK_N, TOP], float("inf"), tl.float32)  # unsorted set of the kept
        top_i = tl.full([BLOCK_N, TOP], -1, tl.int32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
            for d0 in range(0, D, BLOCK_D):
                ds = d0 + tl.arange(0, BLOCK_D)
                d_ok = ds < D
                xt = tl.load(x_ptr + rows64[:, None] * stride_x + ds[None, :],
                             mask=row_ok[:, None] & d_ok[None, :], other=0.0)
                ct = tl.load(c_ptr + ks.to(tl.int64)[None, :] * stride_c + ds[:, None],
                             mask=k_ok[None, :] & d_ok[:, None], other=0.0)
                if EMULATE_BF16:  # interpreter: bf16 dot is broken there; same rounding, fp32 dot
                    acc = tl.dot(xt.to(tl.bfloat16).to(tl.float32), ct.to(tl.bfloat16).to(tl.float32),
                                 acc, input_precision="ieee")
                else:
                    acc = tl.dot(xt.to(tl.bfloat16), ct.to(tl.bfloat16), acc)
            term = tl.load(term_ptr + ks, mask=k_ok, other=0.0)
            if COSINE:
                score = -(acc * term[None, :])
            else:
                score = term[None, :] - 2.0 * acc
            score = tl.where(k_ok[None, :], score, float("inf"))
            for _ in tl.static_range(TOP):  # the tile's TOP lowest, each replacing the worst kept
                m, a = tl.min(score, axis=1, return_indices=True, return_indices_tie_break_left=True)
                worst, w_at = tl.max(top_v, axis=1, return_indices=True, return_indices_tie_break_left=True)
                put = (m < worst)[:, None] & (slot[None, :] == w_at[:, None])
                top_v = tl.where(put, m[:, None], top_v)
                top_i = tl.where(put, (k0 + a)[:, None], top_i)
                score = tl.where(tl.arange(0, BLOCK_K)[None, :] == a[:, None], float("inf"), score)
        off = rows64[:, None] * TOP + slot[None, :]
        tl.store(cand_v_ptr + off, top_v, mask=row_ok[:, None])
        tl.store(cand_i_ptr + off, top_i, mask=row_ok[:, None])

    @triton.jit
    def _rerank_kernel(x_ptr, c_ptr, term_ptr, cand_v_ptr, cand_i_ptr, bound_ptr, idx_ptr, q_ptr,
                       dist_ptr, flag_ptr, N, K, D, stride_x, stride_c, stride_q,
                       COSINE: tl.constexpr, TOP: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_D: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        rows64 = rows.to(tl.int64)
        slot = tl.arange(0, TOP)
        off = rows64[:, None] * TOP + slot[None, :]
        cv = tl.load(cand_v_ptr + off, mask=row_ok[:, None], other=float("inf"))
        ci = tl.load(cand_i_ptr + off, mask=row_ok[:, None], other=-1)
        # ||x_n|| for the bound (and the cosine distance)
        xsq = tl.zeros([BLOCK_N], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            xt = tl.load(x_ptr + rows64[:, None] * stride_x + ds[None, :],
                         mask=row_ok[:, None] & (ds < D)[None, :], other=0.0).to(tl.float32)
            xsq += tl.sum(xt * xt, axis=1)
        margin = 2.0 * (tl.load(bound_ptr) * tl.sqrt(xsq) + tl.load(bound_ptr + 1))
        best_apx = tl.min(cv, axis=1)
        worst_apx = tl.max(cv, axis=1)
        flag = row_ok & (K > TOP) & (worst_apx <= best_apx + margin)
        best = tl.full([BLOCK_N], float("inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_N], tl.int32)
        for j in tl.static_range(TOP):
            kj = tl.sum(tl.where(slot[None, :] == j, ci, 0), axis=1)  # candidate j of each row
            ok = row_ok & (kj >= 0)
            k64 = tl.where(ok, kj, 0).to(tl.int64)
            dot = tl.zeros([BLOCK_N], tl.float32)
            for d0 in range(0, D, BLOCK_D):
                ds = d0 + tl.arange(0, BLOCK_D)
                m = ok[:, None] & (ds < D)[None, :]
                xt = tl.load(x_ptr + rows64[:, None] * stride_x + ds[None, :], mask=m, other=0.0).to(tl.float32)
                ct = tl.load(c_ptr + k64[:, None] * stride_c + ds[None, :], mask=m, other=0.0).to(tl.float32)
                dot += tl.sum(xt * ct, axis=1)
            term = tl.load(term_ptr + k64, mask=ok, other=0.0)
            if COSINE:
                s = -(dot * term)
            else:
                s = term - 2.0 * dot
            s = tl.where(ok, s, float("inf"))
            better = (s < best) | ((s == best) & (kj < best_idx) & ok)
            best = tl.where(better, s, best)
            best_idx = tl.where(better, kj, best_idx)
        idx64 = best_idx.to(tl.int64)
        tl.store(idx_ptr + rows64, idx64, mask=row_ok)
        tl.store(flag_ptr + rows64, flag.to(tl.int8), mask=row_ok)
        acc_d = tl.zeros([BLOCK_N], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            m = row_ok[:, None] & (ds < D)[None, :]
            cq = tl.load(c_ptr + idx64[:, None] * stride_c + ds[None, :], mask=m, other=0.0).to(tl.float32)
            tl.store(q_ptr + rows64[:, None] * stride_q + ds[None, :], cq, mask=m)
            if not COSINE:
                xt = tl.load(x_ptr + rows64[:, None] * stride_x + ds[None, :], mask=m, other=0.0).to(tl.float32)
                diff = xt - cq
                acc_d += tl.sum(diff * diff, axis=1)
        if COSINE:
            dist = 1.0 - (-best) / tl.maximum(tl.sqrt(xsq), 1e-12)
        else:
            dist = acc_d
        tl.store(dist_ptr + rows64, dist, mask=row_ok)


def _blocks(d: int):
    if interpreting():
        return 64, 128, 64
    return 64, 64, (32 if d <= 32 else 64)


def score_bound(codebook: torch.Tensor, term: torch.Tensor, mode: str) -> torch.Tensor:
    """[e_n / ||x_n|| of the module docstring, an absolute pad for the rounding of the score's own
    last operations (2^-21 of the largest code term)] as fp32 on the device (no host sync)."""
    d = codebook.shape[1]
    per = 2.0 * (2 * _U + _U * _U + d * 2.0 ** -23)
    if mode == "cosine":
        cmax = (codebook.float().norm(dim=1) * term).amax()  # 1, or 0 for an all-zero codebook
        pad = torch.ones_like(cmax)
    else:
        cmax = term.amax().sqrt()  # term = ||c_k||^2
        pad = term.amax()
    return torch.stack((per * cmax * 1.0001, pad * 2.0 ** -21)).float()


def lookup_rerank(x, codebook, mode, term, idx, q, dist, top: int = TOP_M):
    """Candidates + re-ranking for rows of x (one launch each); writes idx, q, dist in place and
    returns the int8 flags of the rows whose exact answer needs the fallback."""
    n, d = x.shape
    k = codebook.shape[0]
    bn, bk, bd = _blocks(d)
    cand_v = torch.empty(n, top, dtype=torch.float32, device=x.device)
    cand_i = torch.empty(n, top, dtype=torch.int32, device=x.device)
    flags = torch.empty(n, dtype=torch.int8, device=x.device)
    grid = (triton.cdiv(n, bn),)
    _candidates_kernel[grid](x, codebook, term, cand_v, cand_i, n, k, d, x.stride(0), codebook.stride(0),
                             COSINE=(mode == "cosine"), EMULATE_BF16=interpreting(), TOP=top,
                             BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd)
    _rerank_kernel[grid](x, codebook, term, cand_v, cand_i, score_bound(codebook, term, mode), idx, q,
                         dist, flags, n, k, d, x.stride(0), codebook.stride(0), q.stride(0),
                         COSINE=(mode == "cosine"), TOP=top, BLOCK_N=bn, BLOCK_D=bd)
    return flags
