"""Filesystem steps shared by every writer: a file or a directory artifact is written beside its
destination and renamed over it, so a reader (or a crash) sees the old version or the new one,
never half of one."""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
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


def dir_staging(out: Path, marker: str, what: str) -> Path:
    """A fresh temp dir beside `out` for a directory artifact finished with swap_dir. `out` must be
    absent, empty, or an earlier artifact of this kind (it holds `marker`): megaspeech never replaces
    what it did not write. A leftover temp dir of this process is removed first (it is ours)."""
    if out.exists() and not (out / marker).is_file() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a {what} directory (no {marker}): "
                              f"megaspeech never replaces what it did not write; choose another directory")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def resolve_path(path: str) -> Path:
    """A config path: `megaspeech:REL` is REL inside the installed package (the demo data), anything
    else a filesystem path (`~` expanded)."""
    if path.startswith("megaspeech:"):
        return Path(__file__).parent / path.split(":", 1)[1]
    return Path(path).expanduser()


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(path) -> bool:
    """True for an fsspec URL such as s3://bucket/prefix (a str; a Path is always local)."""
    return isinstance(path, str) and bool(_URL.match(path))


def pid_alive(pid: int) -> bool:
    """True if a process with this id runs on this host (ours included)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def stale_temps(directory: str | Path, name: str = r"[^/]+", dead_only: bool = True) -> list[Path]:
    """The leftovers of `atomic_path` / `ShardWriter` in `directory`: files `.NAME.tmpPID[suffix]`
    whose NAME matches the regex `name`, and (dead_only) whose writer PID no longer runs on this host.
    Only this tool's own temp-name pattern is ever matched; the caller removes what it may."""
    pat = re.compile(rf"\.(?:{name})\.tmp(?P<pid>\d+)(?:\.[A-Za-z0-9]+)?")
    d = Path(directory)
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.iterdir()):
        m = pat.fullmatch(p.name)
        if m and p.is_file() and not (dead_only and (int(m["pid"]) == os.getpid() or pid_alive(int(m["pid"])))):
            out.append(p)
    return out


def remove_stale_temps(directory: str | Path, name: str = r"[^/]+", dead_only: bool = True) -> list[Path]:
    """Remove `stale_temps(...)`; returns what was removed."""
    found = stale_temps(directory, name, dead_only)
    for p in found:
        p.unlink(missing_ok=True)
    return found


def try_lock(path: str | Path, record: str):
    """Take an exclusive flock on `path` (created if missing) without waiting and write `record` into
    it: returns (the open file, None); keep the file open for as long as the lock is to be held (the
    kernel releases it when the file is closed or the process dies, so a crash leaves no stale lock).
    If another process holds it: (None, the holder's record as it wrote it)."""
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        for _ in range(20):  # the holder writes its record right after taking the lock
            f.seek(0)
            holder = f.read().strip()
            if holder:
                break
            time.sleep(0.05)
        f.close()
        return None, holder
    f.seek(0)
    f.truncate()
    f.write(record)
    f.flush()
    os.fsync(f.fileno())
    return f, None
