"""Write WebDataset shards + manifest for training.

    python launch/prepare_data.py text --config configs/data/demo.yaml [text.out_dir=... text.worker=3 ...]

    # Hugging Face `datasets` data: parquet / JSON-lines files (streamed) or a save_to_disk directory
    python launch/prepare_data.py text --config configs/data/demo.yaml \
        'corpora=["parquet:/data/web/*.parquet;text=content;id=url"]' text.out_dir=s3://bucket/text

Subcommands:
  text   real text corpora -> `text` shards (megaspeech.data.prep_text); corpus specs: sotu, kjv,
         shakespeare:PATH, files:GLOB, parquet:GLOB, jsonl:GLOB, hf_disk:DIR (megaspeech.data.corpora)
Speech and interleaved shards are written by the speech-tokenizer and interleaving tools through
the same writer (megaspeech.data.shards.ShardWriter) and resume rule (part_done / merge_parts).
"""
from __future__ import annotations

import sys

from megaspeech.config.cli import parse_args
from megaspeech.config.prep import DataPrepConfig

COMMANDS = ("text",)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        sys.exit(f"usage: prepare_data.py {{{','.join(COMMANDS)}}} --config FILE [key=value ...]\n{__doc__}")
    cmd, rest = argv[0], argv[1:]
    cfg, _ = parse_args(DataPrepConfig, f"prepare_data.py {cmd}", rest)
    if cmd == "text":
        from megaspeech.data.prep_text import prepare_text
        prepare_text(cfg)


if __name__ == "__main__":
    main()
