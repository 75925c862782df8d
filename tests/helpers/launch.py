"""Run launch/pretrain.py in 1-4 local gloo processes and read back metrics.jsonl."""
from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pretrain(nproc: int, run_dir: Path, overrides: list[str], launcher: str = "torchrun",
                 config: str = "configs/tiny.yaml", timeout: int = 600, env: dict | None = None,
                 check: bool = True) -> subprocess.CompletedProcess:
    port = str(free_port())
    if launcher == "deepspeed":
        cmd = ["deepspeed", "--num_gpus", str(nproc), "--master_port", port]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", port]
    cmd += ["launch/pretrain.py", "--config", config, f"run.dir={run_dir}", "train.progress_bar=false", *overrides]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    leaked = glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_{port}_*")  # DeepSpeed's CPU shm all-reduce
    assert not leaked, f"the run left shared memory behind: {leaked}"
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir)]
