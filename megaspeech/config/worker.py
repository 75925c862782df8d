"""The `worker:` section of the data tools: one worker of a job array over disjoint part ranges
(megaspeech.data.shards.parts_for_worker); the workers together write the same bytes as one."""
from __future__ import annotations

from dataclasses import dataclass

from megaspeech.config.load import check


@dataclass
class WorkerConfig:
    index: int = 0  # this worker (e.g. SLURM_ARRAY_TASK_ID) ...
    count: int = 1  # ... of this many

    def __post_init__(self):
        check(0 <= self.index < self.count, "worker.index", f"must be in [0, worker.count={self.count})")
