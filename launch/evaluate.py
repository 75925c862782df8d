"""Evaluate a model on a suite: `python launch/evaluate.py --config configs/eval/spoken_lm.yaml model=DIR [k=v ...]`.

DIR is a checkpoint of any layout (run dir, RUN/checkpoints, or a step dir) or a Hugging Face dir
written by launch/export_hf.py. Writes OUT/eval.json and OUT/table.md (out_dir=...), prints the table.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from megaspeech.config.cli import parse_args
from megaspeech.config.eval_suite import SuiteConfig


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(SuiteConfig, __doc__, argv)
    logging.basicConfig(level=logging.WARNING)
    from megaspeech.eval.contamination import ContaminationError
    from megaspeech.eval.run import evaluate
    try:
        res = evaluate(cfg, log=lambda m: print(m, file=sys.stderr))
    except (ContaminationError, FileNotFoundError, ValueError) as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    print(res["table"])
    print(f"\nwrote {Path(cfg.out_dir) / 'eval.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
