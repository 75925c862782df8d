"""Stand-in for launch/pretrain.py in the Slurm tests: a 2-rank gloo job with the trainer's contract.

Same command line (`--config FILE` + dotted overrides, `--local_rank` from DeepSpeed's launcher),
same restart contract: SIGUSR1/SIGTERM -> all ranks agree at the next step boundary, rank 0 writes
RUN_DIR/checkpoints/latest.json atomically, exit 0; `run.resume=auto` continues from it. Each step
all-reduces (rank + 1) into a running total, so a resumed run whose state was lost or doubled
ends with a wrong total. Rank 0 appends {"step", "total", "world", "restart"} to metrics.jsonl.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from megaspeech.config.cli import parse_args  # noqa: E402


@dataclass
class Run:
    dir: str = "runs/counter"
    resume: str = "none"


@dataclass
class CounterConfig:
    run: Run = field(default_factory=Run)
    steps: int = 10
    step_seconds: float = 0.2


def main() -> None:
    cfg, _ = parse_args(CounterConfig, "Slurm test stand-in trainer")
    stop = []
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, lambda s, f: stop.append(s))
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    run = Path(cfg.run.dir)
    run.mkdir(parents=True, exist_ok=True)
    ckpt = run / "checkpoints" / "latest.json"
    step, total = 0, 0
    if cfg.run.resume == "auto" and ckpt.exists():
        state = json.loads(ckpt.read_text())
        step, total = state["step"], state["total"]
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))

    def save() -> None:
        if rank == 0:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_suffix(".tmp")
            tmp.write_text(json.dumps({"step": step, "total": total}))
            os.replace(tmp, ckpt)
        dist.barrier()

    while step < cfg.steps:
        time.sleep(cfg.step_seconds)
        t = torch.tensor([rank + 1.0])
        dist.all_reduce(t)
        step, total = step + 1, total + int(t.item())
        if rank == 0:
            with open(run / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "total": total, "world": world, "restart": restart}) + "\n")
        flag = torch.tensor([1.0 if stop else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            save()
            print(f"rank {rank}: signal {stop[:1]} -> checkpoint at step {step}, exiting", flush=True)
            break
    else:
        save()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
