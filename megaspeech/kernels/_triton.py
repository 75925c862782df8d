"""Shared backend plumbing for the kernels: optional Triton import and backend choice.

Triton is optional at import time so that the torch paths work on machines without it (macOS,
minimal CI images); asking for the Triton backend there raises a clear error instead.
"""
from __future__ import annotations

import os

import torch

try:  # pragma: no cover - exercised implicitly by every import
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None
    tl = None

BACKENDS = ("auto", "triton", "torch")


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def pick_backend(backend: str, t: torch.Tensor, what: str) -> str:
    """Resolve "auto" to "triton" for CUDA tensors and "torch" otherwise; validate the rest.

    A forced "triton" on CPU tensors only works in the interpreter; say so rather than letting
    Triton fail with "0 active drivers".
    """
    if backend not in BACKENDS:
        raise ValueError(f"{what}: backend={backend!r}; use one of {BACKENDS}")
    if backend == "auto":
        return "triton" if (t.is_cuda and triton is not None) else "torch"
    if backend == "triton":
        if triton is None:
            raise RuntimeError(f"{what}: backend='triton' but triton is not installed; "
                               "pip install triton, or use backend='torch'")
        if not t.is_cuda and not interpreting():
            raise RuntimeError(f"{what}: backend='triton' on CPU tensors needs TRITON_INTERPRET=1 "
                               "set before triton is imported; or use backend='torch' on CPU")
    return backend


def store_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of a kernel's output buffer for results wanted in `dtype`.

    The interpreter's fp32 -> bf16 store truncates (rounds toward zero) where the GPU store rounds
    to nearest even; so under the interpreter a kernel computing bf16 results writes fp32 and torch
    casts (round to nearest even, what the GPU store does). The identity everywhere else."""
    return torch.float32 if (dtype == torch.bfloat16 and interpreting()) else dtype
