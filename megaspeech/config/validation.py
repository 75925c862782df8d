"""The `eval:` section of the pre-training config: held-out loss during training (megaspeech/train/validate.py).

    eval.sources   held-out datasets, same shard format and manifest as data.sources (read once, in
                   order: no shuffle, epochs=1, so every validation sees the same rows)
    eval.interval  steps between validations; 0 (default) turns validation off
    eval.batches   global batches (train.global_batch rows of train.seq_len tokens each) per validation
"""
from __future__ import annotations

from dataclasses import dataclass, field

from megaspeech.config.data import SourceConfig
from megaspeech.config.load import check


@dataclass
class EvalConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    interval: int = 0  # steps between validations; 0: off
    batches: int = 4  # global batches per validation

    def __post_init__(self):
        check(self.interval >= 0, "eval.interval", "must be >= 0 (0 turns validation off)")
        check(self.batches >= 1, "eval.batches", "must be >= 1")
        check(not (self.interval and not self.sources), "eval.sources",
              "eval.interval > 0 needs at least one held-out source, e.g. [{path: data/heldout_text}]")
        names = [s.name for s in self.sources]
        check(len(set(names)) == len(names), "eval.sources", f"names must be unique, got {names}")
