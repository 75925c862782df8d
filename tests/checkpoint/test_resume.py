"""Acceptance 1 and 2 of issue 5: a crash in the middle of a save keeps `latest` at the previous
checkpoint; a SIGKILL at a random step, then resume, reproduces the uninterrupted run exactly
(losses and consumed sample ids)."""
from __future__ import annotations

import os
import random

import pytest

from tests.helpers.checkpoint_runs import STEPS, launch, losses, samples

TP2 = ["parallel.tensor=2", "parallel.pipeline=1", "checkpoint.interval=2", "checkpoint.keep=3"]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """One run dir: crash inside the save of step 4, resume and SIGKILL at a random step in
    [5, STEPS-2], resume to the end. Snapshots of the checkpoint dir after each phase."""
    run = tmp_path_factory.mktemp("interrupted") / "run"
    ck = run / "checkpoints"
    rc_crash = launch(run, TP2, env={"MEGASPEECH_CRASH_IN_SAVE": "4"})
    assert (ck / "latest").is_file(), f"the run died before its first checkpoint; see {run}/launch.log"
    after_crash = {"dirs": sorted(p.name for p in ck.iterdir()), "latest": (ck / "latest").read_text(),
                   "tmp_files": sorted(p.name for p in (ck / "step00000004.tmp").iterdir())
                   if (ck / "step00000004.tmp").is_dir() else [], "losses": losses(run)}
    seed = int.from_bytes(os.urandom(4), "little")
    kill_at = random.Random(seed).randint(5, STEPS - 2)  # >= 2 steps left to kill
    print(f"SIGKILL at step {kill_at} (seed {seed})")
    rc_kill = launch(run, TP2, kill_at_step=kill_at)
    n_killed = len(losses(run))
    rc_final = launch(run, TP2)
    return {"run": run, "rc": (rc_crash, rc_kill, rc_final), "after_crash": after_crash, "kill_at": kill_at,
            "n_before_kill": len(after_crash["losses"]), "n_killed": n_killed}


def test_crash_mid_save_keeps_previous_latest(interrupted, ref_run):
    rc_crash, _, _ = interrupted["rc"]
    after = interrupted["after_crash"]
    assert rc_crash != 0  # the last rank died inside the save
    assert after["latest"] == "step00000002"
    assert "step00000004" not in after["dirs"] and "step00000004.tmp" in after["dirs"]
    assert "rank0.pt" in after["tmp_files"]  # rank 0 had written its part before the crash
    # resume from step 2: the next run's first records are steps 3, 4 with the reference losses
    resumed = losses(interrupted["run"])[interrupted["n_before_kill"]:]
    ref = dict(losses(ref_run))
    assert [s for s, _ in resumed[:2]] == [3, 4]
    for s, loss in resumed[:2]:
        assert loss == pytest.approx(ref[s], rel=1e-6, abs=0)
    assert not list((interrupted["run"] / "checkpoints").glob("*.tmp"))  # later saves removed the debris


def test_sigkill_then_resume_is_exact(interrupted, ref_run):
    _, rc_kill, rc_final = interrupted["rc"]
    assert rc_kill != 0 and rc_final == 0
    run, ref = interrupted["run"], dict(losses(ref_run))
    got = losses(run)
    # the killed run got past its random step; the last run finished the schedule
    assert max(s for s, _ in got[:interrupted["n_killed"]]) >= interrupted["kill_at"]
    assert got[-1][0] == STEPS and {s for s, _ in got} == set(range(1, STEPS + 1))
    for s, loss in got:  # every record, including steps redone after each interruption
        assert loss == pytest.approx(ref[s], rel=1e-6, abs=0), f"step {s}"
    ref_ids = {(r, s): ids for r, s, ids in samples(ref_run)}
    got_ids = samples(run)
    assert {(r, s) for r, s, _ in got_ids} == set(ref_ids)
    for r, s, ids in got_ids:
        assert ids == ref_ids[(r, s)], f"rank {r} step {s}"
    # the last record per step is the sequence a user sees: identical to the uninterrupted run
    final = {}
    for s, loss in got:
        final[s] = loss
    assert [final[s] for s in range(1, STEPS + 1)] == pytest.approx([ref[s] for s in range(1, STEPS + 1)],
                                                                  rel=1e-6, abs=0)
