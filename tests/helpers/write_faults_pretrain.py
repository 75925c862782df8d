"""launch/pretrain.py with a failing checkpoint write simulated (tests/faults/test_run_faults.py):

MEGASPEECH_TEST_ZIPFAIL=S: a torch.save to a path containing S writes half its bytes, then raises torch's
  own zip-writer error, as torch.save does on a full disk in most trials (not an OSError):
  `RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos ...`.
MEGASPEECH_TEST_READONLY=S: creating a directory whose path contains S fails with EACCES, as in a
  directory this user may not write (chmod does not stop root, who runs the tests in CI)."""
import errno
import io
import os
import runpy
import sys
from pathlib import Path

import torch

_save, _mkdir = torch.save, os.mkdir
ZIP, READONLY = os.environ.get("MEGASPEECH_TEST_ZIPFAIL"), os.environ.get("MEGASPEECH_TEST_READONLY")


def zip_fail_save(obj, f, *args, **kwargs):
    if not isinstance(f, (str, os.PathLike)) or ZIP not in str(f):
        return _save(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    _save(obj, buf, *args, **kwargs)
    n = len(buf.getvalue())
    with open(f, "wb") as fh:
        fh.write(buf.getvalue()[: n // 2])
    raise RuntimeError(f"[enforce fail at inline_container.cc:672] . unexpected pos {n // 2 + 64} vs {n // 2}")


def readonly_mkdir(path, *args, **kwargs):
    if READONLY in str(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    return _mkdir(path, *args, **kwargs)


if ZIP:
    torch.save = zip_fail_save
if READONLY:
    os.mkdir = readonly_mkdir
script = Path(__file__).resolve().parents[2] / "launch" / "pretrain.py"
sys.argv[0] = str(script)
runpy.run_path(str(script), run_name="__main__")
