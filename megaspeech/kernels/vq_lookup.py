"""Fused VQ codebook lookup: the nearest code of every row without an N x K distance matrix.

Definition (see `vq_lookup_reference`, the function every backend must reproduce). All arithmetic
is fp32 whatever the input dtypes (bf16/fp16 are upcast on load):
- mode="l2": score[n, k] = ||c_k||^2 - 2 <x_n, c_k>  (||x_n||^2 is constant per row and left out),
  index = argmin_k score, the lowest k on ties; min_dist = ||x_n - c_index||^2 computed directly
  (so it is exactly 0 when x_n equals a code, which the expanded form would not give).
- mode="cosine": score[n, k] = -<x_n, c_k> / max(||c_k||, 1e-12), index = argmin (= the code of
  largest cosine similarity, lowest k on ties); min_dist = 1 - cos(x_n, c_index), in [0, 2].
  The codebook need not be normalised; the returned quantized rows are the raw codebook rows.

Backends: Triton (CUDA, or the CPU interpreter) tiles over K keeping a running min/argmin in
registers (bf16/fp16: tensor-core dots, exact products; an fp32 operand: by default a bf16
candidate search with exact fp32 re-ranking, megaspeech/kernels/vq_rerank.py); the torch path (CPU) walks
row chunks x code chunks so peak extra memory is one chunk of scores (default 1024 x 2048 fp32 =
8 MiB) plus the outputs.
"""
from __future__ import annotations

from typing import Literal

import torch

from megaspeech.kernels._triton import interpreting, pick_backend, tl, triton
from megaspeech.kernels.vq_rerank import lookup_rerank

MODES = ("l2", "cosine")
_EPS = 1e-12  # same clamp as F.normalize: a zero code or row gets a finite, zero score

# torch path: one scores chunk = rows x codes fp32 (8 MiB); the fastest of the sizes tried here
CPU_CHUNK_ROWS = 1024
CPU_CHUNK_CODES = 2048


def _check(x: torch.Tensor, codebook: torch.Tensor, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"vq_lookup: mode={mode!r}; use one of {MODES}")
    if x.dim() != 2 or codebook.dim() != 2:
        raise ValueError(f"vq_lookup: x must be [N, D] and codebook [K, D], got {tuple(x.shape)} "
                         f"and {tuple(codebook.shape)}; reshape x to (-1, D) first")
    if x.shape[1] != codebook.shape[1]:
        raise ValueError(f"vq_lookup: x has D={x.shape[1]} but codebook has D={codebook.shape[1]}")
    if codebook.shape[0] == 0:
        raise ValueError("vq_lookup: empty codebook (K=0)")
    for name, t in (("x", x), ("codebook", codebook)):
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise TypeError(f"vq_lookup: {name} dtype {t.dtype}; use float32, bfloat16 or float16")
    if x.device != codebook.device:
        raise ValueError(f"vq_lookup: x on {x.device} but codebook on {codebook.device}")


def code_term(codebook: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-code fp32 term of the score: ||c_k||^2 (l2) or 1 / max(||c_k||, 1e-12) (cosine). [K]"""
    c = codebook.float()
    sq = (c * c).sum(1)
    return sq if mode == "l2" else 1.0 / sq.sqrt().clamp_min(_EPS)


def _finish(xf: torch.Tensor, codebook: torch.Tensor, idx: torch.Tensor, best: torch.Tensor,
            mode: str):
    """Quantized rows and min distance from the winning index (and score, for cosine)."""
    q = codebook.index_select(0, idx)
    if mode == "l2":
        dist = (xf - q.float()).pow(2).sum(1)
    else:
        dist = 1.0 - (-best) / xf.norm(dim=1).clamp_min(_EPS)
    return q, dist


def vq_lookup_reference(x: torch.Tensor, codebook: torch.Tensor,
                        mode: Literal["l2", "cosine"] = "l2"):
    """The definition, in plain torch (materialises N x K; for tests and small inputs).

    x [N, D], codebook [K, D], float dtypes. Returns (indices int64 [N], quantized [N, D] in
    codebook.dtype, min_dist float32 [N]).
    """
    _check(x, codebook, mode)
    xf, cf = x.float(), codebook.float()
    term = code_term(codebook, mode)
    dots = xf @ cf.T
    score = term - 2.0 * dots if mode == "l2" else -(dots * term)
    best, idx = score.min(1)  # torch returns the first minimum: lowest index on ties
    q, dist = _finish(xf, codebook, idx, best, mode)
    return idx, q, dist


def _lookup_torch(x, codebook, mode, chunk_rows, chunk_codes=None):
    """Chunked torch path: peak extra memory is chunk_rows x chunk_codes fp32 plus the outputs."""
    n, k = x.shape[0], codebook.shape[0]
    chunk_codes = chunk_codes or CPU_CHUNK_CODES
    cf = codebook.float()  # no copy for fp32 codebooks
    term = code_term(codebook, mode)
    idx = torch.empty(n, dtype=torch.int64, device=x.device)
    q = torch.empty(n, x.shape[1], dtype=codebook.dtype, device=x.device)
    dist = torch.empty(n, dtype=torch.float32, device=x.device)
    for r0 in range(0, n, chunk_rows):
        xr = x[r0:r0 + chunk_rows].float()
        best = torch.full((xr.shape[0],), float("inf"), device=x.device)
        arg = torch.zeros(xr.shape[0], dtype=torch.int64, device=x.device)
        for k0 in range(0, k, chunk_codes):
            ck, tk = cf[k0:k0 + chunk_codes], term[k0:k0 + chunk_codes]
            if mode == "l2":  # term - 2 x.c in one BLAS call, same rounding as the reference
                s = torch.addmm(tk, xr, ck.T, beta=1.0, alpha=-2.0)
            else:
                s = torch.mm(xr, ck.T).mul_(tk).neg_()
            m, a = s.min(1)
            better = m < best  # strict: an earlier chunk keeps ties (lowest index)
            best = torch.where(better, m, best)
            arg = torch.where(better, a + k0, arg)
        qr, dr = _finish(xr, codebook, arg, best, mode)
        idx[r0:r0 + chunk_rows], q[r0:r0 + chunk_rows], dist[r0:r0 + chunk_rows] = arg, qr, dr
    return idx, q, dist


if triton is not None:

    @triton.jit
    def _vq_lookup_kernel(x_ptr, c_ptr, term_ptr, idx_ptr, q_ptr, dist_ptr, flag_ptr, N, K, D,
                          stride_x, stride_c, stride_q,
                          COSINE: tl.constexpr, NATIVE_DOT: tl.constexpr, ONLY_FLAGGED: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        k_end = K
        if ONLY_FLAGGED:  # the exact fallback of megaspeech/kernels/vq_rerank.py: blocks without a flag skip
            row_ok = row_ok & (tl.load(flag_ptr + rows, mask=row_ok, other=0) != 0)
            k_end = K * tl.max(row_ok.to(tl.int32), axis=0)
        rows64 = rows.to(tl.int64)
        best = tl.full([BLOCK_N], float("inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_N], tl.int32)
        for k0 in range(0, k_end, BLOCK_K):
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
                if NATIVE_DOT:
                    # bf16/fp16 products are exact in fp32, so tensor cores with an fp32
                    # accumulator compute the same sums as an upcast dot (up to order)
                    acc = tl.dot(xt, ct, acc)
                else:
                    # fp32: "ieee" not tf32, or indices would differ from the reference
                    acc = tl.dot(xt.to(tl.float32), ct.to(tl.float32), acc, input_precision="ieee")
            term = tl.load(term_ptr + ks, mask=k_ok, other=0.0)
            if COSINE:
                score = -(acc * term[None, :])
            else:
                score = term[None, :] - 2.0 * acc
            score = tl.where(k_ok[None, :], score, float("inf"))
            tile_min, tile_arg = tl.min(score, axis=1, return_indices=True,
                                        return_indices_tie_break_left=True)
            better = tile_min < best  # strict: earlier tiles keep ties (lowest index)
            best = tl.where(better, tile_min, best)
            best_idx = tl.where(better, k0 + tile_arg, best_idx)

        idx64 = best_idx.to(tl.int64)
        tl.store(idx_ptr + rows64, idx64, mask=row_ok)
        acc_d = tl.zeros([BLOCK_N], tl.float32)
        for d0 in range(0, D * (k_end > 0), BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            m = row_ok[:, None] & (ds < D)[None, :]
            # upcast at once: bf16 arithmetic is wrong in the interpreter; the fp32->bf16
            # store is exact for values that came from bf16, so rows stay bit-equal
            cq = tl.load(c_ptr + idx64[:, None] * stride_c + ds[None, :], mask=m,
                         other=0.0).to(tl.float32)
            tl.store(q_ptr + rows64[:, None] * stride_q + ds[None, :], cq, mask=m)
            xt = tl.load(x_ptr + rows64[:, None] * stride_x + ds[None, :], mask=m,
                         other=0.0).to(tl.float32)
            if COSINE:
                acc_d += tl.sum(xt * xt, axis=1)
            else:
                diff = xt - cq
                acc_d += tl.sum(diff * diff, axis=1)
        if COSINE:
            dist = 1.0 - (-best) / tl.maximum(tl.sqrt(acc_d), 1e-12)
        else:
            dist = acc_d
        tl.store(dist_ptr + rows64, dist, mask=row_ok)


def _blocks(d: int):
    if interpreting():  # cost ~ programs x loop steps: big tiles, still > 1 tile in tests
        return 64, 128, 64
    return 64, 64, (32 if d <= 32 else 64)


def _lookup_triton(x, codebook, mode, chunk_rows, fp32_search):
    n, d = x.shape
    k = codebook.shape[0]
    x = x.contiguous()
    codebook = codebook.contiguous()
    term = code_term(codebook, mode).contiguous()
    idx = torch.empty(n, dtype=torch.int64, device=x.device)
    q = torch.empty(n, d, dtype=codebook.dtype, device=x.device)
    dist = torch.empty(n, dtype=torch.float32, device=x.device)
    half = x.dtype == codebook.dtype and x.dtype in (torch.bfloat16, torch.float16)
    native = half and not interpreting()
    rerank = not half and fp32_search == "rerank"
    bn, bk, bd = _blocks(d)
    for r0 in range(0, n, chunk_rows):  # chunked launch: bounded grid for N in the millions
        r1 = min(n, r0 + chunk_rows)
        flags = None
        if rerank:  # bf16 candidates + exact fp32 re-ranking; flagged rows rerun below
            flags = lookup_rerank(x[r0:r1], codebook, mode, term, idx[r0:r1], q[r0:r1], dist[r0:r1])
        grid = (triton.cdiv(r1 - r0, bn),)
        _vq_lookup_kernel[grid](x[r0:r1], codebook, term, idx[r0:r1], q[r0:r1], dist[r0:r1],
                                flags if rerank else idx, r1 - r0, k, d, x.stride(0), codebook.stride(0),
                                q.stride(0), COSINE=(mode == "cosine"), NATIVE_DOT=native,
                                ONLY_FLAGGED=rerank, BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd)
    return idx, q, dist


def vq_lookup(x: torch.Tensor, codebook: torch.Tensor, mode: Literal["l2", "cosine"] = "l2",
              backend: Literal["auto", "triton", "torch"] = "auto", chunk_rows: int | None = None,
              fp32_search: Literal["rerank", "ieee"] = "rerank"):
    """Nearest codebook row of every row of x, without materialising N x K distances.

    Args:
        x: [N, D] float32/bfloat16/float16 (not differentiated: pass x.detach() in training).
        codebook: [K, D] float, same device as x.
        mode: "l2" (squared Euclidean) or "cosine" (distance = 1 - cosine similarity).
        backend: "auto" (Triton on CUDA, chunked torch otherwise), "triton" (also CPU tensors
            under TRITON_INTERPRET=1) or "torch".
        chunk_rows: rows per chunk (torch) or per kernel launch (Triton); None picks a default.
        fp32_search: Triton with an fp32 operand: "rerank" (bf16 tensor-core candidates, exact
            fp32 re-ranking, exact fallback where the rounding bound is not met; see
            megaspeech/kernels/vq_rerank.py) or "ieee" (every score an fp32 CUDA-core dot). Same results.
    Returns:
        indices int64 [N], quantized [N, D] in codebook.dtype (rows of the codebook, bit-equal),
        min_dist float32 [N]. Ties go to the lowest index; see the module docstring.
    """
    _check(x, codebook, mode)
    backend = pick_backend(backend, x, "vq_lookup")
    if fp32_search not in ("rerank", "ieee"):
        raise ValueError(f"vq_lookup: fp32_search={fp32_search!r}; use 'rerank' or 'ieee'")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"vq_lookup: chunk_rows={chunk_rows}; use a positive int or None")
    x, codebook = x.detach(), codebook.detach()
    if x.shape[0] == 0:
        return (torch.empty(0, dtype=torch.int64, device=x.device),
                codebook.new_empty(0, x.shape[1]), torch.empty(0, device=x.device))
    if backend == "triton":
        return _lookup_triton(x, codebook, mode, chunk_rows or 1 << 20, fp32_search)
    return _lookup_torch(x, codebook, mode, chunk_rows or CPU_CHUNK_ROWS)
