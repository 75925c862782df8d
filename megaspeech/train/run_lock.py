"""One owner per run directory: rank 0 holds an flock on RUN/.lock for the whole run.

Taken (collectively: every rank learns the outcome) before anything is written into run.dir, so a
second training started on the same directory fails at once, naming the holder's pid and host, instead
of both writing (and pruning) the same checkpoints and metrics. The kernel releases the lock when the
holder dies, so a crash never leaves a stale lock: the next run takes it. While the lock is held, any
`step*.tmp` directory under RUN/checkpoints that is not being written by this run is a dead run's
leftover, which is what makes the save's cleanup of them safe.
"""
from __future__ import annotations

import datetime
import os
import socket
import sys
from pathlib import Path

import torch.distributed as dist

from megaspeech.fs import try_lock

LOCK = ".lock"
_held: dict[str, object] = {}  # resolved run dir -> open lock file (held until the process exits)


class RunDirInUse(RuntimeError):
    """Another process (a live training) owns the run directory."""


def _claim(run_dir: Path) -> str | None:
    key = str(run_dir.resolve())
    if key in _held:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record = f"pid {os.getpid()} on host {socket.gethostname()}, since {now}: {' '.join(sys.argv)}\n"
    f, holder = try_lock(run_dir / LOCK, record)
    if f is None:
        return (f"run.dir {run_dir} is in use by another training: {holder or 'a process that has not written its pid yet'} "
                f"(holds {run_dir / LOCK}). Two trainings in one run.dir would delete each other's checkpoints: "
                f"wait for it to finish or stop it, or give this one another run.dir")
    _held[key] = f
    return None


def claim_run_dir(run_dir: str | Path) -> None:
    """Rank 0 takes (or already holds) the run-dir lock; a collective when a process group is up.
    Raises RunDirInUse on every rank if another process holds it."""
    run_dir = Path(run_dir)
    grouped = dist.is_available() and dist.is_initialized()
    error = [None]
    if not grouped or dist.get_rank() == 0:
        try:
            error = [_claim(run_dir)]
        except OSError as e:  # e.g. run.dir not writable: every rank must learn of it
            error = [f"cannot take the lock {run_dir / LOCK}: {e}"]
    if grouped:
        dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise RunDirInUse(error[0])
