"""Document (packed-row) attention masks: a FlexAttention `BlockMask` on CUDA, a dense bool mask for SDPA on CPU.

Both encode one function: position q attends to kv iff kv <= q and doc_ids[b, q] == doc_ids[b, kv].

The dense [B, 1, S, S] mask costs S^2 bytes per row (64 MiB at seq 8192) and keeps SDPA off its
flash kernel, so on CUDA the mask is a FlexAttention BlockMask instead. `create_block_mask` would
evaluate the mask_mod on all S^2 pairs (at long sequence that can cost more than the attention);
`doc_block_mask` derives the block structure from per-block min/max document ids in O(S + (S/128)^2)
device ops, with no host synchronization, and FlexAttention evaluates the mask_mod only inside the
partial blocks (diagonal blocks and document boundaries).

`attention_mask(doc_ids, impl)` is cached on the identity of `doc_ids`, so the layers of a pipeline
stage (which each receive the same doc_ids tensor) build the mask once per micro-batch.
"""
from __future__ import annotations

import functools

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

BLOCK = 128  # FlexAttention's default tile; block structure below is computed at this granularity


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """doc_ids [B, S] -> bool [B, 1, S, S]: causal and within the same packed document (SDPA's mask)."""
    S = doc_ids.shape[1]
    causal = torch.ones(S, S, dtype=torch.bool, device=doc_ids.device).tril()
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    return (same & causal)[:, None]


def _ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool [B, 1, nq, nkv] -> (count int32 [B, 1, nq], indices int32 [B, 1, nq, nkv]): the marked kv
    blocks first, in increasing order (BlockMask's layout)."""
    num = dense.sum(-1, dtype=torch.int32)
    idx = torch.argsort(dense.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return num, idx


def doc_block_mask(doc_ids: torch.Tensor, block: int = BLOCK) -> BlockMask:
    """doc_ids [B, S] (any integers; packed rows are non-decreasing) -> BlockMask of the causal
    document mask. A block pair is skipped only if no pair inside can match (the id ranges of the
    two blocks are disjoint, or the kv block is in the future), and marked full only if both blocks
    hold one and the same document and the kv block is strictly in the past: exact for packed rows,
    conservative (never wrong, maybe less sparse) for unordered ids."""
    B, S = doc_ids.shape
    nb = -(-S // block)
    pad = nb * block - S
    # Padding repeats the last id: it changes no block's min/max; the padded tail is cut by seq_lengths.
    d = torch.cat([doc_ids, doc_ids[:, -1:].expand(B, pad)], 1) if pad else doc_ids
    d = d.view(B, nb, block)
    lo, hi = d.amin(-1), d.amax(-1)  # [B, nb]
    qi = torch.arange(nb, device=doc_ids.device)
    past = qi[None, :] < qi[:, None]  # [nq, nkv]: kv block strictly before q block
    diag = torch.eye(nb, dtype=torch.bool, device=doc_ids.device)
    overlap = (lo[:, None, :] <= hi[:, :, None]) & (hi[:, None, :] >= lo[:, :, None])  # [B, nq, nkv]
    single = lo == hi
    full = past & overlap & single[:, None, :] & single[:, :, None]
    if pad:  # the last block is ragged: let FlexAttention's mask_mod see it
        full[:, -1, :] = False
        full[:, :, -1] = False
    partial = ((past & overlap) | diag) & ~full
    kv_num, kv_idx = _ordered(partial[:, None])
    full_num, full_idx = _ordered(full[:, None])
    ids = doc_ids

    def mask_mod(b, h, q, kv):
        return (q >= kv) & (ids[b, q] == ids[b, kv])

    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block,
                                    mask_mod=mask_mod, seq_lengths=(S, S))


def use_flex(impl: str, device: torch.device) -> bool:
    """`model.attention`: flex -> always FlexAttention; auto -> FlexAttention on CUDA, SDPA elsewhere."""
    return impl == "flex" or (impl == "auto" and device.type == "cuda")


_last: list = [None, None, None]  # (doc_ids, its _version, mask): identity cache of the last mask built


@torch.compiler.disable  # plain tensor code run once per micro-batch; keeps compiled blocks free of it
def attention_mask(doc_ids: torch.Tensor | None, impl: str):
    """The mask object `causal_attention` takes for these doc_ids (None: plain causal attention)."""
    if doc_ids is None:
        return None
    key = (doc_ids, doc_ids._version, impl)
    # Holding doc_ids keeps its id from being reused, so `is` identifies the same micro-batch.
    if _last[0] is doc_ids and _last[1] == key[1:]:
        return _last[2]
    mask = doc_block_mask(doc_ids) if use_flex(impl, doc_ids.device) else document_mask(doc_ids)
    _last[:] = [doc_ids, key[1:], mask]
    return mask


@functools.cache
def _compiled_flex():
    # FlexAttention only fuses under torch.compile; eager is a dense reference (fine on CPU tests).
    return torch.compile(flex_attention, dynamic=False)


def flex_causal_attention(q, k, v, mask: BlockMask) -> torch.Tensor:
    """q [B, h, S, d], k/v [B, kv, S, d] under a document BlockMask -> [B, h, S, d]."""
    fn = _compiled_flex() if q.is_cuda else flex_attention
    return fn(q, k, v, block_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
