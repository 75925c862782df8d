"""Text shards -> synthetic interleaved speech-text shards with a text-to-token model (arXiv 2411.17607).

    python launch/make_interleaved.py --config configs/interleave_tiny.yaml [input=... output=... model=...]
    # a job array: N independent workers over disjoint part ranges, same bytes as one worker
    python launch/make_interleaved.py --config ... worker.index=$SLURM_ARRAY_TASK_ID worker.count=N

Finished parts are skipped on restart; the worker that finds every part finished writes
manifest.json. The job: megaspeech/synth/interleaved_shards.py.
"""
from __future__ import annotations

import json
import logging
import sys

from megaspeech.config.cli import parse_args
from megaspeech.synth.interleaved_shards import MakeInterleavedConfig, make_interleaved


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(MakeInterleavedConfig, __doc__, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(json.dumps(make_interleaved(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
