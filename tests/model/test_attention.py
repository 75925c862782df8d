"""Document masks: the cheap FlexAttention BlockMask against torch's create_block_mask, FlexAttention
against SDPA with the dense mask, and a packed row against its documents run alone (TP=1)."""
import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from megaspeech.config.schema import ModelConfig
from megaspeech.data.toy_stream import SyntheticLoader
from megaspeech.model.attention import attention_mask, doc_block_mask, document_mask
from megaspeech.model.llm import DecoderLM, causal_attention
from megaspeech.parallel.layers import TorchLayers
from megaspeech.vocab import Vocab


def packed_doc_ids(B, S, seed, max_len=200):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(B):
        lens = torch.randint(1, max_len, (S,), generator=g)
        rows.append(torch.repeat_interleave(torch.arange(S), lens)[:S])
    return torch.stack(rows)


def reference_block_mask(doc):
    def mm(b, h, q, kv):
        return (q >= kv) & (doc[b, q] == doc[b, kv])
    return create_block_mask(mm, doc.shape[0], None, doc.shape[1], doc.shape[1], device="cpu")


def block_sets(bm):
    """{(b, q_block): (partial kv blocks, full kv blocks)} as sets."""
    out = {}
    B, _, nq = bm.kv_num_blocks.shape
    for b in range(B):
        for i in range(nq):
            part = set(bm.kv_indices[b, 0, i, :bm.kv_num_blocks[b, 0, i]].tolist())
            full = set(bm.full_kv_indices[b, 0, i, :bm.full_kv_num_blocks[b, 0, i]].tolist())
            out[b, i] = (part, full)
    return out


@pytest.mark.parametrize("max_len", [40, 200, 700])
def test_block_structure_equals_create_block_mask(max_len):
    doc = packed_doc_ids(3, 1024, seed=max_len, max_len=max_len)  # 8 x 8 blocks of 128
    ours, ref = doc_block_mask(doc), reference_block_mask(doc)
    assert block_sets(ours) == block_sets(ref)
    assert ours.sparsity() == ref.sparsity() and ours.sparsity() > 0


def make_qkv(B, S, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, S, 16, generator=g) for h in (4, 2, 2))  # GQA: 4 query, 2 kv heads


@pytest.mark.parametrize("S,unordered", [(300, False), (256, False), (300, True)])
def test_flex_equals_sdpa_with_dense_mask(S, unordered):
    doc = packed_doc_ids(2, S, seed=S, max_len=90)
    if unordered:  # ids need not be sorted: the block mask stays correct (conservative)
        doc = doc % 3
    q, k, v = make_qkv(2, S, seed=1)  # forward only: torch has no FlexAttention backward on CPU
    bm = doc_block_mask(doc)
    out = causal_attention(q, k, v, bm)
    ref = causal_attention(q, k, v, document_mask(doc), impl="sdpa")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # the planted signal: without the document mask the output differs
    plain = flex_attention(q, k, v, enable_gqa=True, block_mask=doc_block_mask(torch.zeros_like(doc)))
    assert (plain - ref).abs().max() > 1e-2


@pytest.mark.parametrize("impl", ["sdpa", "flex"])
def test_packed_row_equals_documents_alone(impl):
    cfg = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_heads=4, num_kv_heads=2, attention=impl)
    model = DecoderLM(cfg, TorchLayers(), 256, seed=0).eval()
    torch.manual_seed(0)
    doc = packed_doc_ids(2, 200, seed=3, max_len=70)
    ids = torch.randint(0, 256, (2, 200))
    with torch.no_grad():
        packed = model(ids, doc)  # [S, B, V]
        n = 0
        for b in range(2):
            for d in doc[b].unique():
                pos = (doc[b] == d).nonzero().flatten()
                alone = model(ids[b:b + 1, pos])[:, 0]
                torch.testing.assert_close(packed[pos, b], alone, rtol=1e-4, atol=1e-4)
                n += 1
        assert n >= 6
        assert (model(ids)[:, :] - packed).abs().max() > 1e-2  # the mask changes the packed logits


def test_mask_cached_per_doc_ids_tensor():
    doc = packed_doc_ids(1, 256, seed=0, max_len=50)
    m1 = attention_mask(doc, "flex")
    assert attention_mask(doc, "flex") is m1  # the layers of a stage share one mask
    assert isinstance(attention_mask(doc, "sdpa"), torch.Tensor)  # another impl: rebuilt
    doc[0, 100:] += 1  # in place: a new version, a new mask
    m2 = attention_mask(doc, "flex")
    assert m2 is not m1 and block_sets(m2) == block_sets(reference_block_mask(doc))
    assert attention_mask(None, "flex") is None


def test_synthetic_loader_carries_doc_ids():
    vocab = Vocab(text_size=4096, speech_size=1024)
    batch = next(iter(SyntheticLoader(vocab, 256, 2, 0, 1, seed=0, document_mask=True)))
    ids, doc = batch["input_ids"], batch["doc_ids"]
    assert doc.shape == ids.shape and doc.dtype == torch.int64
    starts = (ids == vocab.bos_id) | (ids == vocab.bos_speech_id)
    # a new document begins exactly at each begin-of-document token (after position 0)
    assert torch.equal(doc.diff(dim=1) == 1, starts[:, 1:])
    assert (doc.diff(dim=1) >= 0).all() and doc[:, -1].min() >= 3
    assert "doc_ids" not in next(iter(SyntheticLoader(vocab, 256, 2, 0, 1, seed=0)))
