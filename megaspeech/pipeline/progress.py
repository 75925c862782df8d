"""Training stages' subprocess and console progress: a training tool (launch/pretrain.py,
launch/train_text_to_token.py) runs under torch.distributed.run with its output in the stage log,
and its metrics.jsonl drives one console line per new step (step, %, ETA)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from megaspeech.pipeline.layout import ROOT, preset


def train_tool(ctx, stage: str, script: str, section, argv: list[str], steps: int) -> list[dict]:
    """Run launch/<script> with the section's preset + argv under torch.distributed.run (section.nproc
    processes); its output goes to the stage log (our stdout), its metrics.jsonl drives the console
    progress. Returns the metrics rows."""
    run_dir, root, config = ctx.dir(stage), ROOT, preset(section.config)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(section.nproc),
           "--master_port", str(_free_port()), str(root / "launch" / script), "--config",
           str(config), *argv]
    print("$ " + " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": child_threads(section.nproc),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    metrics = run_dir / "metrics.jsonl"
    code = run_child(cmd, progress_poller(metrics, stage, steps, ctx.progress), env)
    if code != 0:
        raise RuntimeError(f"{script} exited with {code}; see {run_dir / 'log.txt'}")
    rows = _rows(metrics)
    # a trainer stopped by SIGTERM/SIGUSR1 (or out of data) saves a checkpoint and exits 0, for a requeue
    if not rows or rows[-1]["step"] < steps:
        raise RuntimeError(f"{script} stopped at step {rows[-1]['step'] if rows else 0} of {steps} (a signal "
                           f"reached it or its data ran out: see {run_dir / 'log.txt'}); rerun the pipeline "
                           f"command to resume it")
    return rows


def child_threads(nproc: int) -> str:
    """OMP_NUM_THREADS for each of nproc training processes: the caller's setting, else this machine's
    cores shared among them (torch.distributed.run alone would give each process one thread, leaving
    a 1-process run on one core)."""
    return os.environ.get("OMP_NUM_THREADS") or str(max(1, len(os.sched_getaffinity(0)) // nproc))


def run_child(cmd: list[str], poll, env: dict | None = None, every: float = 2.0) -> int:
    """Run cmd (output to ours), calling poll() every `every` s; returns its exit code. A SIGTERM to
    this process (a user's kill, a scheduler's stop) is passed on to the child, and this process
    exits once the child has: a stopped pipeline leaves no training process behind."""
    import signal
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sys.stdout, stderr=sys.stderr) as p:
        def stop(signum, frame):
            p.terminate()
            p.wait()
            raise SystemExit(128 + signum)
        prev = signal.signal(signal.SIGTERM, stop)
        try:
            while p.poll() is None:
                time.sleep(every)
                poll()
        finally:
            signal.signal(signal.SIGTERM, prev)
    return p.returncode


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def progress_poller(metrics: Path, stage: str, steps: int, say):
    """A poll() that says one eta_line per new step of `metrics`. The rate counts only rows written
    after this call: a resumed run appends from its checkpoint's step, and the steps before it
    took no time of this invocation."""
    n0, t0, seen = len(_rows(metrics)), time.time(), None

    def poll() -> None:
        nonlocal seen
        rows = _rows(metrics)[n0:]
        if rows and rows[-1]["step"] != seen:
            seen = rows[-1]["step"]
            say(eta_line(stage, seen, steps, time.time() - t0, rows[0]["step"] - 1))
    return poll


def eta_line(stage: str, step: int, total: int, elapsed: float, start: int = 0, max_seconds: float = 0) -> str:
    """max_seconds: a time budget that ends the stage before `total` steps (the speech tokenizer's)."""
    done = max(step - start, 1)
    eta = elapsed / done * max(total - step, 0)
    if max_seconds:
        eta = min(eta, max(max_seconds - elapsed, 0.0))
    return f"[{stage}] step {step}/{total} ({100 * step / max(total, 1):.0f}%) eta {fmt(eta)}"


def fmt(s: float) -> str:
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"


def loss_metrics(rows: list[dict]) -> dict:
    last = rows[-1]
    out = {"steps": last["step"], "consumed_tokens": last.get("consumed_tokens")}
    for k in ("loss", "loss_text", "loss_speech"):
        if k in last:
            out[f"final_{k}"] = last[k]
            out[f"first_{k}"] = rows[0].get(k)
    out.update({k: v for k, v in last.items() if k.startswith("data/samples/")})
    return out


