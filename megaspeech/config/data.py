"""Data section of the pre-training config (`data.*`).

  kind              shards (WebDataset shards) | synthetic (built-in token stream, no files): required,
                    so a config that names no data fails at load instead of training on the toy stream
  sources           shards only: list of {name, path, weight, epochs}
                    path: a dataset dir (manifest.json); `megaspeech:demo/text` = inside the package;
                    or a URL: s3://bucket/prefix, http(s)://host/prefix, pipe:COMMAND ({} = file name)
                    weight: share of the mixture (of tokens or samples, see mix_unit); normalized
                    epochs: passes over this source, then it leaves the mixture; null = repeat forever
                    GLM-4-Voice style: text weight 0.3 epochs null, speech/pairs epochs 1, interleaved rest
  root              shards only: relative source paths are under this dir or URL (e.g. a launch/pipeline.py
                    run dir: text/shards, speech_shards/unsup, speech_shards/pairs, interleaved/shards)
  mix_unit          tokens | samples: what the weights divide
  shuffle           shard order and within-shard order are permuted per (seed, epoch)
  open_shards       shards read concurrently per source and rank (samples alternate between them)
  on_error          raise (default: error naming shard and key) | skip (counted in loader.stats())
  verify_checksums  sha256 of each shard against the manifest: a local shard is hashed before its first
                    sample is used; a remote one as it streams, a mismatch raised at its end
  shuffle_buffer    within-shard shuffle window in samples: a shard of n <= shuffle_buffer samples is read
                    in a permutation drawn from (seed, source, epoch, shard); a larger one in the order
                    argsort(i + U_i * shuffle_buffer), so at most ~shuffle_buffer samples are held while
                    the tar streams (memory does not grow with the shard size)
  read_ahead_mb     bytes read ahead per open shard (and for the next shard) by a background thread
  storage_options   remote sources: keyword arguments of the fsspec filesystem (s3fs: endpoint_url,
                    anon, profile, client_kwargs, ...); credentials otherwise from the AWS env/config
  io_timeout_s      remote sources: timeout of every request (connect and read)
  io_retries        remote sources: retries of a transient failure (connection reset/refused, 5xx,
                    timeout, truncated body), resuming at the byte reached; then data.on_error
  io_backoff_s      first wait between retries, doubled each time
  io_chunk_mb       remote sources: bytes per ranged request (each request costs a round trip and the
                    server's per-request work: fewer, larger ones stream faster; memory per open shard
                    is up to read_ahead_mb + 2 x io_chunk_mb)
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
from megaspeech.fs import is_url, resolve_path


MODALITY_IDS = {"text": 0, "speech": 1}  # the batch's `modality` values
def is_remote(path: str) -> bool:
    """A dataset read through megaspeech.data.remote's clients: an fsspec URL or pipe:COMMAND."""
    return isinstance(path, str) and (path.startswith("pipe:") or is_url(path))


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

    def resolved_path(self) -> Path | str:
        """The local directory, or the URL unchanged (see megaspeech.data.remote)."""
        return self.path if is_remote(self.path) else resolve_path(self.path)


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
    shuffle_buffer: int = 1024
    read_ahead_mb: float = 16.0
    storage_options: dict = field(default_factory=dict)
    io_timeout_s: float = 60.0
    io_retries: int = 5
    io_backoff_s: float = 0.5
    io_chunk_mb: float = 16.0

    def __post_init__(self):
        check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        check(self.open_shards >= 1, "data.open_shards", "must be >= 1")
        check(0.0 <= self.asr_fraction <= 1.0, "data.asr_fraction", "must be in [0, 1]")
        check(0.0 <= self.speech_fraction <= 1.0, "data.speech_fraction", "must be in [0, 1]")
        check(self.shuffle_buffer >= 1, "data.shuffle_buffer", "must be >= 1 (samples)")
        check(self.read_ahead_mb > 0, "data.read_ahead_mb", "must be > 0")
        check(self.io_timeout_s > 0, "data.io_timeout_s", "must be > 0 seconds (every request has a timeout)")
        check(self.io_retries >= 0, "data.io_retries", "must be >= 0")
        check(self.io_backoff_s >= 0, "data.io_backoff_s", "must be >= 0 seconds")
        check(self.io_chunk_mb > 0, "data.io_chunk_mb", "must be > 0 (MiB per ranged request)")
        check(self.kind != "", "data.kind",
              "the config names no data: add a data section (data.kind=shards with data.sources, e.g. "
              "base: data/mixture_glm4voice.yaml) or set data.kind=synthetic for the built-in toy stream")
        if self.kind == "shards":
            check(len(self.sources) > 0, "data.sources",
                  "data.kind=shards needs at least one source, e.g. [{path: megaspeech:demo/text}]")
            if self.root:
                for s in self.sources:
                    if s.path.startswith("megaspeech:") or is_remote(s.path) or Path(s.path).expanduser().is_absolute():
                        continue
                    if self.root.startswith("pipe:"):  # the file name goes where {} is
                        s.path = self.root.replace("{}", f"{s.path.strip('/')}/{{}}")
                    elif is_remote(self.root):
                        s.path = f"{self.root.rstrip('/')}/{s.path}"
                    else:  # absolute, so a saved config.yaml loaded again resolves to the same dirs
                        s.path = str(Path(self.root).expanduser().resolve() / s.path)
            names = [s.name for s in self.sources]
            check(len(set(names)) == len(names), "data.sources", f"names must be unique, got {names}")
