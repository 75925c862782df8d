"""The decoder's building blocks against plain references."""
import torch

from megaspeech.config.schema import ModelConfig
from megaspeech.model.llm import DecoderLM, apply_rope, causal_attention, document_mask
from megaspeech.parallel.layers import TorchLayers


def test_attention_equals_explicit_softmax_with_gqa():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 7, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    scores = q @ kk.transpose(-1, -2) / 8**0.5
    scores = scores.masked_fill(~torch.ones(7, 7, dtype=torch.bool).tril(), float("-inf"))
    ref = scores.softmax(-1) @ vv
    torch.testing.assert_close(causal_attention(q, k, v, impl="sdpa"), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(causal_attention(q, k, v), ref, rtol=1e-5, atol=1e-5)


def test_document_mask_blocks_attention_across_documents():
    cfg = ModelConfig(num_layers=1, hidden_size=32, ffn_hidden_size=64, num_heads=4, num_kv_heads=2)
    model = DecoderLM(cfg, TorchLayers(), 64, seed=0)
    ids = torch.randint(0, 64, (1, 10))
    docs = torch.tensor([[0] * 4 + [1] * 6])
    packed = model(ids, docs)[4:, 0]
    alone = model(ids[:, 4:])[:, 0]  # the second document on its own: positions differ only by RoPE
    # RoPE is relative, so attention inside the document is position-shift invariant.
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-4)
    assert document_mask(docs)[0, 0, 5, 3].item() is False


def test_rope_rotates_relative_positions():
    torch.manual_seed(0)
    from megaspeech.model.llm import rope_tables
    cos, sin = rope_tables(12, 8, 10000.0, None)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    for interleaved in (False, True):
        def dot(i, j):
            qi = apply_rope(q, cos[i:i + 1], sin[i:i + 1], interleaved)
            kj = apply_rope(k, cos[j:j + 1], sin[j:j + 1], interleaved)
            return (qi * kj).sum()
        torch.testing.assert_close(dot(3, 1), dot(10, 8), rtol=1e-5, atol=1e-5)
