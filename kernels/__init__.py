"""Custom kernels, each a Triton kernel beside the plain torch reference that defines it, with a
dispatcher (backend="auto": Triton on CUDA tensors, a memory-bounded torch path otherwise;
"triton" also runs CPU tensors under TRITON_INTERPRET=1, which is how the tests check it).

- vq_lookup: nearest codebook row without an N x K distance matrix (speech tokenizer).
- vq.VectorQuantizer: straight-through VQ with EMA codebook, fused code statistics, dead-code restart.
- ctc_compress: one vector per CTC label run (the speech-to-LM bridge of arXiv 2312.03668).
"""
from kernels.ctc_compress import ctc_compress, ctc_compress_reference
from kernels.vq import VectorQuantizer, code_stats, perplexity
from kernels.vq_lookup import vq_lookup, vq_lookup_reference

__all__ = ["ctc_compress", "ctc_compress_reference", "VectorQuantizer", "code_stats", "perplexity",
           "vq_lookup", "vq_lookup_reference"]
