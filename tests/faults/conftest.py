"""The fault tier: each test injects one failure into real files or runs and checks that nothing is
lost, nothing runs from a file, nothing hangs, and the error names the file and the fix."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.fault_runs import losses, run


@pytest.fixture(scope="session")
def base_run(tmp_path_factory) -> Path:
    """4 steps, checkpoints at steps 2 and 4 (latest = step 4). Tests copy it before changing it."""
    d = tmp_path_factory.mktemp("faults") / "base"
    p = run(d, ["train.steps=4"])
    assert p.returncode == 0, p.stderr[-4000:]
    assert [s for s, _ in losses(d)] == [1, 2, 3, 4]
    return d
