"""Pre-train a speech-text LM: `deepspeed --num_gpus N launch/pretrain.py --config configs/tiny.yaml [k=v ...]`.

The same script runs on CPU (gloo) and GPU nodes; `--dry-run` prints parameters, per-GPU memory and
FLOPs per token for the config's layout without building the model or starting process groups.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

import yaml

from megaspeech.config.cli import parse_args
from megaspeech.config.load import ConfigError
from megaspeech.config.schema import PretrainConfig


def setup_logging(run_dir: Path, rank: int) -> None:
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(run_dir / "logs" / f"rank{rank}.log")]
    if rank == 0:
        handlers.append(logging.StreamHandler())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)


def build_task(cfg: PretrainConfig, layout):
    """The trainer's task for `cfg.task`: lm -> the token LM, bridge -> the speech bridge (encoder ->
    bridge -> LM); the Task protocol is megaspeech/train/task_spec.py's."""
    if cfg.task == "bridge":
        from megaspeech.bridge.task import BridgeTask
        return BridgeTask(cfg, layout)
    from megaspeech.train.task_spec import LMTask
    return LMTask(cfg, layout)


def main(argv: list[str] | None = None) -> int:
    def extra(p):
        p.add_argument("--dry-run", action="store_true", help="print the accounting and exit")
        p.add_argument("--world-size", type=int, default=None,
                       help="--dry-run only: number of GPUs to plan for (default: tensor x pipeline)")

    cfg, args = parse_args(PretrainConfig, __doc__, argv, extra=extra)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.dry_run:
        from megaspeech import accounting
        try:
            print(accounting.dry_run_report(cfg, args.world_size or cfg.parallel.tensor * cfg.parallel.pipeline))
        except ConfigError as e:
            print(f"config error: {e}", file=sys.stderr)
            return 2
        return 0
    try:  # layout errors fail here, before any process group starts
        cfg.data_parallel_size(world)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2

    from megaspeech.parallel.state import destroy_distributed, init_distributed
    from megaspeech.train.run_lock import RunDirInUse, claim_run_dir
    from megaspeech.train.trainer import Trainer

    layout = init_distributed(cfg.parallel.tensor, cfg.parallel.pipeline)
    run_dir = Path(cfg.run.dir)
    try:  # before anything is written into run.dir: one training per run dir
        claim_run_dir(run_dir)
    except RunDirInUse as e:
        print(f"error: {e}", file=sys.stderr)
        destroy_distributed()
        return 3
    setup_logging(run_dir, layout.rank)
    backends = []
    if layout.rank == 0:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
        try:
            from megaspeech.train.metrics_backends import make_backends
            backends = make_backends(cfg.metrics, run_dir, dataclasses.asdict(cfg))
        except ImportError:
            pass
    from megaspeech.checkpoint.integrity import CheckpointError
    try:
        Trainer(cfg, layout, build_task(cfg, layout), backends).fit()
    except CheckpointError as e:  # named on every rank (agreed): the message is the fix, no traceback
        logging.getLogger("megaspeech").error("%s: %s", type(e).__name__, e)
        return 1
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
