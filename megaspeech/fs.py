"""Filesystem steps shared by every writer: a file or a directory artifact is written beside its
destination and renamed over it, so a reader (or a crash) sees the old version or the new one,
never half of one."""
from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: str | Path, on_wait=None):
    """Hold an exclusive flock on `path` (created if missing) for the block; released on exit or when
    the process dies. If another process holds it, on_wait() (when given) is called once, then wait."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def atomic_path(path: str | Path, suffix: str = ""):
    """Yield a temporary path beside `path` (`.NAME.tmpPID` + suffix, e.g. ".npz" for writers that
    append one); on a clean exit it is fsynced and renamed over `path`, on an error removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def swap_dir(tmp: Path, out: Path) -> Path:
    """Move the complete directory `tmp` to `out`. Whatever is at `out` (the caller has checked it is a
    previous artifact of its own) is moved aside first and deleted only once `tmp` is in place, so
    `out` always holds a complete artifact."""
    old = out.with_name(out.name + f".old{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def resolve_path(path: str) -> Path:
    """A config path: `megaspeech:REL` is REL inside the installed package (the demo data), anything
    else a filesystem path (`~` expanded)."""
    if path.startswith("megaspeech:"):
        return Path(__file__).parent / path.split(":", 1)[1]
    return Path(path).expanduser()
