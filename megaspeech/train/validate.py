"""Held-out loss during training: the fixed validation batches of the `eval:` section (megaspeech/config/validation.py).

The rows are packed exactly as training rows (megaspeech.data.packing) by one reader that every rank
builds identically (dp_rank 0 of 1), then dealt out: each global batch is cut into DP x grad_accum
micro-batches of train.micro_batch rows and DP rank d takes micro-batches [d*ga, (d+1)*ga). The set
of rows is therefore the same at every TP/PP/DP layout and micro-batch size, which is what makes the
validation loss layout-independent. Rows past the end of a small held-out set are padding with
loss_mask 0 (they count nothing).
"""
from __future__ import annotations

import dataclasses


def heldout_rows(cfg, n_rows: int) -> list[dict]:
    """The first n_rows packed rows of cfg.eval.sources (each a loader batch dict of 1 row); fewer when
    the held-out set is smaller. `cfg` is a PretrainConfig."""
    from megaspeech.data.stream import ShardLoader
    srcs = [dataclasses.replace(s, epochs=1) for s in cfg.eval.sources]
    dcfg = dataclasses.replace(cfg.data, kind="shards", sources=srcs, shuffle=False, num_workers=0,
                               on_error="raise")
    loader = ShardLoader(dcfg, cfg.vocab, seq_len=cfg.train.seq_len, micro_batch=1, dp_rank=0, dp_size=1,
                         seed=cfg.run.seed)
    rows = []
    for b in loader:
        rows.append(b)
        if len(rows) == n_rows:
            break
    return rows


def _pad_row(like: dict, pad_id: int) -> dict:
    import torch
    out = {k: torch.zeros_like(v) for k, v in like.items() if k != "sample_ids"}
    out["input_ids"].fill_(pad_id)
    out["labels"].fill_(pad_id)
    return out


def validation_batches(cfg, dp_rank: int, dp_size: int, grad_accum: int) -> list[list[dict]]:
    """This DP rank's validation micro-batches: eval.batches groups of grad_accum micro-batches of
    train.micro_batch rows (tensors as in megaspeech/data/loader.py, without sample_ids)."""
    import torch
    mb, gb = cfg.train.micro_batch, cfg.train.global_batch
    rows = heldout_rows(cfg, cfg.eval.batches * gb)
    if not rows:
        raise ValueError(f"eval.sources {[s.path for s in cfg.eval.sources]} yielded no tokens; "
                         f"point eval.sources at a non-empty held-out dataset")
    rows += [_pad_row(rows[0], cfg.vocab.pad_id)] * (cfg.eval.batches * gb - len(rows))
    keys = [k for k in rows[0] if k != "sample_ids"]
    groups = []
    for g in range(cfg.eval.batches):
        start = g * gb + dp_rank * grad_accum * mb
        group = []
        for a in range(grad_accum):
            chunk = rows[start + a * mb: start + (a + 1) * mb]
            group.append({k: torch.cat([r[k] for r in chunk]) for k in keys})
        groups.append(group)
    return groups
