"""launch/pretrain.py with a full disk simulated: any torch.save to a path containing
$MEGASPEECH_TEST_ENOSPC writes half of its bytes, then fails with ENOSPC, as a write to a full
filesystem does. Used by tests/faults/test_checkpoint_faults.py."""
import errno
import io
import os
import runpy
import sys
from pathlib import Path

import torch

_save = torch.save
MATCH = os.environ["MEGASPEECH_TEST_ENOSPC"]


def full_disk_save(obj, f, *args, **kwargs):
    if not isinstance(f, (str, os.PathLike)) or MATCH not in str(f):
        return _save(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    _save(obj, buf, *args, **kwargs)
    with open(f, "wb") as fh:
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))


torch.save = full_disk_save
script = Path(__file__).resolve().parents[2] / "launch" / "pretrain.py"
sys.argv[0] = str(script)
runpy.run_path(str(script), run_name="__main__")
