"""The uninterrupted reference run, made once per session (each 2-process launch costs ~20 s of
startup) and shared by the resume, resharding and export tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.checkpoint_runs import STEPS, launch, losses


@pytest.fixture(scope="session")
def ref_run(tmp_path_factory) -> Path:
    """Uninterrupted TP=2 / PP=1 / DP=1 run of STEPS steps, checkpoints at steps 5 and 10."""
    run = tmp_path_factory.mktemp("ref") / "run"
    rc = launch(run, ["parallel.tensor=2", "parallel.pipeline=1", "checkpoint.interval=5", "checkpoint.keep=3"])
    assert rc == 0, f"reference run failed; see {run}/launch.log"
    assert [s for s, _ in losses(run)] == list(range(1, STEPS + 1))
    return run
