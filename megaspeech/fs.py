"""Filesystem steps shared by every writer of a directory artifact (exports, tokenizers, converted models)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


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
