"""2-process training runs for the checkpoint tests: launch, then read metrics / sample-id logs."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.launch import free_port

REPO = Path(__file__).resolve().parents[2]
SP_MODEL = REPO / "megaspeech" / "demo" / "tokenizer" / "tokenizer.model"
STEPS = 10
# A small member of tiny.yaml's family; explicit data/vocab so the tests don't follow tiny.yaml's data.
COMMON = ["train.progress_bar=false", "data.kind=synthetic", "model.num_layers=2", "model.hidden_size=64",
          "model.ffn_hidden_size=128", "model.num_heads=4", "model.num_kv_heads=2", "train.seq_len=64",
          "train.micro_batch=4", "train.global_batch=8", "metrics.wandb=disabled", "metrics.tensorboard=false",
          "optim.warmup_steps=2", "vocab.text_size=4096", "vocab.speech_size=4096", f"vocab.sp_model={SP_MODEL}",
          "parallel.zero_stage=1", f"train.steps={STEPS}"]


def launch(run_dir: Path, overrides: list[str], env: dict | None = None, kill_at_step: int | None = None,
           timeout: float = 300) -> int:
    """torchrun 2 processes of launch/pretrain.py; returns the exit code. `kill_at_step`: SIGKILL the
    whole process group as soon as metrics.jsonl shows that step."""
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "--nproc_per_node", "2",
           str(REPO / "launch" / "pretrain.py"), "--config", str(REPO / "configs" / "tiny.yaml"),
           *COMMON, f"run.dir={run_dir}", *overrides]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MEGASPEECH_LOG_SAMPLES": "1", **(env or {})}
    with open(run_dir / "launch.log", "a") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"training run in {run_dir} exceeded {timeout} s; see {run_dir}/launch.log")
                if kill_at_step is not None and any(r["step"] >= kill_at_step for r in metrics(run_dir)):
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return proc.returncode
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # DeepSpeed's shared-memory all-reduce buffers (~70 MB per rank) outlive killed ranks.
            for f in glob.glob(f"/dev/shm/deepspeed_*_{port}_*"):
                os.unlink(f)
    return proc.returncode


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.endswith("}"):  # a SIGKILL can cut the last line short
            out.append(json.loads(line))
    return out


def metrics(run_dir: Path) -> list[dict]:
    return _jsonl(run_dir / "metrics.jsonl")


def losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) for every record, in file order (a resumed run appends its re-done steps)."""
    return [(r["step"], r["loss"]) for r in metrics(run_dir)]


def samples(run_dir: Path) -> list[tuple[int, int, list[int]]]:
    """(rank, step, sample ids) for every record of every rank."""
    return [(r, rec["step"], rec["sample_ids"]) for r in range(2)
            for rec in _jsonl(run_dir / f"samples_rank{r}.jsonl")]


def rel_err(a, b) -> float:
    return abs(a - b) / max(abs(b), 1e-30)
