"""Checkpoint faults: checksums recorded and verified (the bad file named), resume=auto falls back to
the newest checkpoint that verifies, pruning never deletes the new checkpoint, resume=none refuses a
used run dir, a full disk during a save leaves no partial directory and a loadable `latest`."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from megaspeech.checkpoint import engine as ckpt

from megaspeech.checkpoint import offline
from tests.helpers.fault_runs import copy_run, losses, run, tags


def flip_byte(f: Path, offset_frac: float = 0.5) -> None:
    """Same-size corruption: one byte in the middle of the file changes."""
    b = bytearray(f.read_bytes())
    b[int(len(b) * offset_frac)] ^= 0xFF
    f.write_bytes(bytes(b))


def test_meta_records_size_and_sha256_of_every_file(base_run):
    for tag in ("step00000002", "step00000004"):
        d = base_run / "checkpoints" / tag
        files = json.loads((d / "meta.json").read_text())["files"]
        on_disk = sorted(p.name for p in d.iterdir() if p.name != "meta.json")
        assert sorted(files) == on_disk and "rank0.pt" in files and "mp_rank_00_model_states.pt" in files
        for name, rec in files.items():
            data = (d / name).read_bytes()
            assert rec == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_same_size_corruption_and_truncation_are_named(base_run, tmp_path):
    run_dir = copy_run(base_run, tmp_path / "run")
    d = run_dir / "checkpoints" / "step00000004"
    assert offline.verify_collective(d) == []
    optim = d / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    flip_byte(optim)
    problems = offline.verify_collective(d)
    assert len(problems) == 1 and str(optim) in problems[0] and "sha256" in problems[0]
    model = d / "mp_rank_00_model_states.pt"
    model.write_bytes(model.read_bytes()[:1000])
    problems = offline.verify_collective(d)
    assert any(str(model) in p and "1000 bytes" in p for p in problems)
    with pytest.raises(ckpt.CheckpointError, match="mp_rank_00_model_states.pt"):  # export refuses it too
        offline.full_state_dict(d)


def test_auto_resume_skips_a_corrupt_latest_and_continues_exactly(base_run, tmp_path):
    run_dir = copy_run(base_run, tmp_path / "run")
    flip_byte(run_dir / "checkpoints" / "step00000004" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    p = run(run_dir, ["train.steps=4"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert "skipping checkpoint" in p.stderr and "step00000004" in p.stderr and "sha256" in p.stderr
    assert "resumed from" in p.stderr and "step00000002 at step 2" in p.stderr
    ref = dict(losses(base_run))
    redone = losses(run_dir)[4:]
    assert [s for s, _ in redone] == [3, 4]
    for s, loss in redone:  # resumed from step 2 exactly: the same losses as the uninterrupted run
        assert loss == pytest.approx(ref[s], rel=1e-6, abs=0)
    assert offline.verify_collective(run_dir / "checkpoints" / "step00000004") == []  # re-saved, good again


def test_auto_without_readable_latest_takes_the_newest_verified(base_run, tmp_path):
    root = copy_run(base_run, tmp_path / "run") / "checkpoints"
    (root / "latest").unlink()
    assert offline.find_resumable(root) == "step00000004"
    (root / "latest").write_text("step00000099")  # names a deleted directory
    assert offline.find_resumable(root) == "step00000004"
    (root / "latest").write_text("step00000002")  # a readable latest comes first
    assert offline.find_resumable(root) == "step00000002"
    flip_byte(root / "step00000002" / "rank0.pt", 0.9)
    assert offline.find_resumable(root) == "step00000004"
    (root / "step00000004" / "meta.json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match=r"none of the 2 checkpoints.*meta.json: not valid JSON"):
        offline.find_resumable(root)
    assert offline.find_resumable(tmp_path / "empty") is None


def test_resume_none_refuses_a_run_dir_with_checkpoints(base_run, tmp_path):
    run_dir = copy_run(base_run, tmp_path / "run")
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()}
    p = run(run_dir, ["train.steps=4", "run.resume=none"])
    assert p.returncode != 0
    assert "run.resume=none" in p.stderr and str(run_dir / "checkpoints") in p.stderr
    assert "run.resume=auto" in p.stderr  # the fix is named
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()} == before
    assert len(losses(run_dir)) == 4  # not a single step trained


def test_pruning_never_deletes_the_new_checkpoint_nor_newer_ones(base_run, tmp_path):
    """Resume from step 2 with keep=1 and save step 3: step 2 (older) goes, step 3 and step 4 stay and
    `latest` names step 3 (before, pruning by name deleted step 3 as it was written)."""
    run_dir = copy_run(base_run, tmp_path / "run")
    root = run_dir / "checkpoints"
    p = run(run_dir, ["train.steps=3", f"run.resume={root / 'step00000002'}", "checkpoint.keep=1",
                      "checkpoint.interval=0"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert tags(run_dir) == ["step00000003", "step00000004"]
    assert (root / "latest").read_text() == "step00000003"
    assert offline.find_resumable(root) == "step00000003"


def test_disk_full_during_save_names_the_dir_removes_the_partial_and_keeps_latest(base_run, tmp_path):
    run_dir = copy_run(base_run, tmp_path / "run")
    root = run_dir / "checkpoints"
    p = run(run_dir, ["train.steps=6"], script="tests/helpers/enospc_pretrain.py",
            env={"MEGASPEECH_TEST_ENOSPC": "step00000006.tmp/zero_pp_rank"})
    assert p.returncode != 0
    err = p.stderr
    assert "No space left on device" in err and f"saving checkpoint step00000006 in {root}" in err
    assert "needs about" in err and "the size of step00000004" in err and "free" in err
    assert "latest` still names step00000004" in err
    assert not list(root.glob("*.tmp")) and tags(run_dir) == ["step00000002", "step00000004"]
    assert (root / "latest").read_text() == "step00000004"
    assert [s for s, _ in losses(run_dir)][4:] == [5, 6]  # it trained on, then the save failed
    assert offline.find_resumable(root) == "step00000004"  # latest still verifies and loads
    sd, meta = offline.full_state_dict(root / "step00000004")
    assert meta["step"] == 4 and sd["0.embed.weight"].shape[1] == 64
