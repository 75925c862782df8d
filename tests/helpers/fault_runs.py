"""1-process training runs for the fault tier: a small member of tiny.yaml's family (~15 s a run),
launched through torchrun like a user would, optionally through a wrapper that injects a fault."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
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
