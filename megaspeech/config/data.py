"""Data section of the pre-training config (`data.*`).

  kind              shards (WebDataset shards) | synthetic (built-in token stream, no files): required,
                    so a config that names no data fails at load instead of training on the toy stream
  sources           shards only: list of {name, path, weight, epochs}
                    path: a dataset dir (manifest.json); `megaspeech:demo/text` = inside the package
                    weight: share of the mixture (of tokens or samples, see mix_unit); normalized
                    epochs: passes over this source, then it leaves the mixture; null = repeat forever
                    GLM-4-Voice style: text weight 0.3 epochs null, speech/pairs epochs 1, interleaved rest
  root              shards only: relative source paths are under this dir (e.g. a launch/pipeline.py
                    run dir: text/shards, speech_shards/unsup, speech_shards/pairs, interleaved/shards)
  mix_unit          tokens | samples: what the weights divide
  shuffle           shard order and within-shard order are permuted per (seed, epoch)
  open_shards       shards read concurrently per source and rank (samples alternate between them)
  on_error          raise (default: error naming shard and key) | skip (counted in loader.stats())
  verify_checksums  sha256 of each shard against the manifest when it is opened
  asr_fraction      supervised speech pairs rendered as ASR (speech then text); the rest as TTS
  document_mask     also emit doc_ids for block-diagonal attention inside packed rows
  num_workers       torch DataLoader worker processes (0: in the training process)
  loss_modalities   label modalities that count in the loss ([speech]: a text-to-token model is not
                    trained on its transcripts)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from megaspeech.config.load import check
from megaspeech.fs import resolve_path


MODALITY_IDS = {"text": 0, "speech": 1}  # the batch's `modality` values


@dataclass
class SourceConfig:
    name: str = ""
    path: str = ""
    weight: float = 1.0
    epochs: int | None = None

    def __post_init__(self):
        check(bool(self.path), "data.sources[].path", "set the dataset directory (holding manifest.json)")
        check(self.weight > 0 and self.weight != float("inf"), "data.sources[].weight", f"must be a finite number > 0, got {self.weight}")
        check(self.epochs is None or self.epochs >= 1, "data.sources[].epochs", "must be >= 1 or null (repeat)")
        if not self.name:
            self.name = Path(self.path.split(":", 1)[-1]).name

    def resolved_path(self) -> Path:
        return resolve_path(self.path)


@dataclass
class DataConfig:
    kind: Literal["synthetic", "shards", ""] = ""  # "" = not set: refused at load
    document_mask: bool = False  # block-diagonal attention inside packed rows (any TP/PP layout)
    num_workers: int = 0
    speech_fraction: float = 0.5  # synthetic stream only: share of speech-modality documents
    sources: list[SourceConfig] = field(default_factory=list)
    root: str = ""  # relative source paths are resolved under it ("" = the working directory)
    mix_unit: Literal["tokens", "samples"] = "tokens"
    shuffle: bool = True
    open_shards: int = 4
    on_error: Literal["raise", "skip"] = "raise"
    verify_checksums: bool = True
    asr_fraction: float = 0.5
    loss_modalities: list[Literal["text", "speech"]] = field(default_factory=lambda: ["text", "speech"])

    def __post_init__(self):
        check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        check(self.open_shards >= 1, "data.open_shards", "must be >= 1")
        check(0.0 <= self.asr_fraction <= 1.0, "data.asr_fraction", "must be in [0, 1]")
        check(0.0 <= self.speech_fraction <= 1.0, "data.speech_fraction", "must be in [0, 1]")
        check(self.kind != "", "data.kind",
              "the config names no data: add a data section (data.kind=shards with data.sources, e.g. "
              "base: data/mixture_glm4voice.yaml) or set data.kind=synthetic for the built-in toy stream")
        if self.kind == "shards":
            check(len(self.sources) > 0, "data.sources",
                  "data.kind=shards needs at least one source, e.g. [{path: megaspeech:demo/text}]")
            if self.root:
                for s in self.sources:
                    if not s.path.startswith("megaspeech:") and not Path(s.path).expanduser().is_absolute():
                        # absolute, so a saved config.yaml loaded again resolves to the same dirs
                        s.path = str(Path(self.root).expanduser().resolve() / s.path)
            names = [s.name for s in self.sources]
            check(len(set(names)) == len(names), "data.sources", f"names must be unique, got {names}")
