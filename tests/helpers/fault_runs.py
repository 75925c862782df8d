"""1-process training runs for the fault tier: a small member of tiny.yaml's family (~15 s a run),
launched through torchrun like a user would, optionally through a wrapper that injects a fault."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.launch import free_port

REPO = Path(__file__).resolve().parents[2]
SP_MODEL = REPO / "megaspeech" / "demo" / "tokenizer" / "tokenizer.model"
SMALL = ["train.progress_bar=false", "data.kind=synthetic", "model.num_layers=2", "model.hidden_size=64",
         "model.ffn_hidden_size=128", "model.num_heads=4", "model.num_kv_heads=2", "train.seq_len=64",
         "train.micro_batch=4", "train.global_batch=8", "metrics.wandb=disabled", "metrics.tensorboard=false",
         "optim.warmup_steps=1", "vocab.text_size=4096", "vocab.speech_size=4096", f"vocab.sp_model={SP_MODEL}",
         "parallel.zero_stage=1", "checkpoint.interval=2", "checkpoint.keep=3"]


def run(run_dir: Path, overrides: list[str], script: str = "launch/pretrain.py", env: dict | None = None,
        timeout: float = 240) -> subprocess.CompletedProcess:
    """torchrun 1 process of `script` (launch/pretrain.py or a fault-injecting wrapper of it)."""
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(port),
           str(REPO / script), "--config", str(REPO / "configs" / "tiny.yaml"), *SMALL, f"run.dir={run_dir}",
           *overrides]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    try:
        return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    finally:  # DeepSpeed's shared-memory all-reduce buffers outlive a failed rank
        for f in glob.glob(f"/dev/shm/deepspeed_*_{port}_*"):
            os.unlink(f)


def losses(run_dir: Path) -> list[tuple[int, float]]:
    f = Path(run_dir) / "metrics.jsonl"
    return [(r["step"], r["loss"]) for r in map(json.loads, f.read_text().splitlines())] if f.is_file() else []


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def tags(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (Path(run_dir) / "checkpoints").iterdir() if p.is_dir())


def rewrite_checksums(step_dir: Path) -> None:
    """What an attacker who controls the directory does: make meta.json match the tampered files."""
    import hashlib
    meta = json.loads((step_dir / "meta.json").read_text())
    meta["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                     for p in sorted(step_dir.iterdir()) if p.is_file() and p.name != "meta.json"}
    (step_dir / "meta.json").write_text(json.dumps(meta))


def start(run_dir: Path, overrides: list[str], log: Path, launcher: str = "torchrun", nproc: int = 1,
          env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """Start a training in the background (output to `log`): torchrun or the `deepspeed` command, `nproc`
    processes of launch/pretrain.py. Returns (the launcher process, its master port)."""
    port = free_port()
    if launcher == "deepspeed":
        cmd = ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(port)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port)]
    cmd += [str(REPO / "launch" / "pretrain.py"), "--config", str(REPO / "configs" / "tiny.yaml"), *SMALL,
            f"run.dir={run_dir}", *overrides]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=fh, stderr=subprocess.STDOUT), port


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not any(s >= step for s, _ in _losses_so_far(run_dir)):
        assert proc.poll() is None, f"the run exited {proc.returncode}:\n{log.read_text()[-12000:-1500]}"
        assert time.monotonic() < deadline, f"no step {step} after {timeout} s:\n{log.read_text()[-4000:]}"
        time.sleep(0.1)


def _losses_so_far(run_dir: Path) -> list[tuple[int, float]]:
    try:
        return losses(run_dir)
    except ValueError:  # a line being written
        return []


def process_tree(pid: int) -> list:
    """psutil.Process of `pid` and every process under it."""
    import psutil
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def alive(procs: list) -> list:
    """Those of `procs` still running (a zombie, exited but not reaped, counts as ended)."""
    import psutil
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def cleanup(procs: list, port: int) -> None:
    """SIGKILL whatever of `procs` still runs (by pid) and remove DeepSpeed's shared memory of `port`."""
    for p in alive(procs):
        with contextlib.suppress(Exception):
            p.kill()
    for f in glob.glob(f"/dev/shm/deepspeed_*_{port}_*"):
        with contextlib.suppress(OSError):
            os.unlink(f)
