"""Data section of the pre-training config (`data.*`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class DataConfig:
    kind: Literal["synthetic", "shards"] = "synthetic"
    document_mask: bool = False  # block-diagonal attention inside packed rows (pipeline=1 only)
    num_workers: int = 0
    speech_fraction: float = 0.5  # synthetic stream only: share of speech-modality documents
