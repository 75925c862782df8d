"""Custom kernels, each a Triton kernel beside the plain torch reference that defines it, with a
dispatcher (backend="auto": Triton on CUDA tensors, a memory-bounded torch path otherwise;
"triton" also runs CPU tensors under TRITON_INTERPRET=1, which is how the tests check it).

- megaspeech.kernels.vq_lookup: vq_lookup / vq_lookup_reference, the nearest codebook row without an N x K
  distance matrix (speech tokenizer).
- megaspeech.kernels.vq: VectorQuantizer (straight-through, EMA codebook with fused code statistics,
  dead-code restart), code_stats, perplexity.
- megaspeech.kernels.ctc_compress: ctc_compress / ctc_compress_reference, one vector per CTC label run
  (the speech-to-LM bridge of arXiv 2312.03668).
- megaspeech.kernels.vq_rerank: the fp32 Triton lookup's bf16 candidate search + exact fp32 re-ranking.
- megaspeech.kernels.linear_cross_entropy: the LM loss from the head's input and weight in token chunks
  (no [N, V] logits), vocab-parallel at TP>1.
- megaspeech.kernels.rmsnorm, megaspeech.kernels.rope (Llama halves, GLM partial interleaved), megaspeech.kernels.swiglu: fused
  elementwise forward/backward for the decoder, Triton on CUDA.

Nothing is re-exported here: a function named like its module (vq_lookup, ctc_compress) would
shadow the submodule attribute `megaspeech.kernels.vq_lookup`.
"""
