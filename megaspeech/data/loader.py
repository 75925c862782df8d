"""The one data-loader interface the trainer consumes.

`build_train_loader(...)` returns an object that is iterable (yields micro-batches forever) and has
`state_dict()` / `load_state_dict()` giving the exact position after the last batch yielded.

A micro-batch is a dict of tensors, all [micro_batch, seq_len] unless noted:
  input_ids  int64   token ids fed to the model
  labels     int64   next-token targets (input_ids shifted by one)
  loss_mask  float32 1.0 where the position counts in the loss
  modality   int64   0 text / 1 speech, per label position (per-modality loss)
  doc_ids    int64   optional: document index inside the packed row (document attention mask)
  sample_ids int64   [micro_batch, M]: ids of the samples packed into each row, -1 padded

Both loaders have `state_dict()` / `load_state_dict(sd)`. For `shards`, sd is this rank's own state
(same DP size) or the list of every DP rank's state (required when the DP size or
data.num_workers changed: elastic resume, each sample still read once per epoch), and
`stats()` returns counters for the metrics log (samples/tokens per source, skipped shards/samples).
A `shards` loader whose sources all have finite `epochs` stops iterating when they are used up
(the last batch is padded, loss_mask 0 on the padding).
"""
from __future__ import annotations

from megaspeech.config.data import DataConfig
from megaspeech.vocab import Vocab


def build_train_loader(cfg: DataConfig, vocab: Vocab, *, seq_len: int, micro_batch: int,
                       dp_rank: int, dp_size: int, seed: int):
    if cfg.kind == "synthetic":
        from megaspeech.data.toy_stream import SyntheticLoader
        return SyntheticLoader(vocab, seq_len, micro_batch, dp_rank, dp_size, seed, cfg.speech_fraction,
                               cfg.document_mask)
    if cfg.kind == "shards":
        from megaspeech.data.stream import ShardLoader
        return ShardLoader(cfg, vocab, seq_len=seq_len, micro_batch=micro_batch, dp_rank=dp_rank,
                           dp_size=dp_size, seed=seed)
    raise ValueError(f"data.kind={cfg.kind!r}: choose synthetic or shards")
