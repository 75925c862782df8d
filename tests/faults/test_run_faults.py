"""Run-level faults (issue 41): two trainings on one run.dir, a stop through the launcher, a resume whose
data changed, a checkpoint whose checksum table cannot vouch for it, a save that fails in torch's zip
writer or in a directory it may not write, a damaged `latest`, a kill inside a save."""
from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from megaspeech.checkpoint import offline
from megaspeech.checkpoint.integrity import CheckpointError
from megaspeech.config.data import DataConfig, SourceConfig
from tests.helpers.fault_runs import (alive, cleanup, copy_run, losses, process_tree, run, start, tags,
                                      wait_for_step)

TRAINER = "launch/pretrain.py"


def no_traceback_of_ours(stderr: str) -> bool:
    """No traceback frame in megaspeech or launch/ (torchrun adds its own ChildFailedError traceback)."""
    frames = [ln for ln in stderr.splitlines() if ln.strip().startswith('File "')]
    return not any("/megaspeech/" in f or "/launch/" in f for f in frames)


def trainers(procs: list) -> list:
    """The training processes (launch/pretrain.py itself, not a launcher that names it)."""
    out = []
    for p in procs:
        argv = p.cmdline()
        if any(a.endswith(TRAINER) for a in argv[:3]):
            out.append(p)
    return out


# ---- 1. one owner per run directory -------------------------------------------------------------
def test_a_second_training_on_the_same_run_dir_fails_at_once_naming_the_holder(tmp_path):
    """Before: both ran, deleted each other's checkpoints, and metrics.jsonl got two records per step."""
    run_dir, log = tmp_path / "run", tmp_path / "a.log"
    a, port = start(run_dir, ["train.steps=1000", "checkpoint.interval=3"], log)
    procs = process_tree(a.pid)
    try:
        wait_for_step(run_dir, 1, a, log)
        procs = process_tree(a.pid)
        (holder,) = trainers(procs)
        config = (run_dir / "config.yaml").stat().st_mtime_ns
        b = run(run_dir, ["train.steps=1000", "checkpoint.interval=3"], timeout=180)
        assert b.returncode != 0 and a.poll() is None, b.stderr[-3000:]
        assert f"run.dir {run_dir} is in use by another training: pid {holder.pid} on host {socket.gethostname()}" \
            in b.stderr, b.stderr[-3000:]
        assert no_traceback_of_ours(b.stderr), b.stderr[-3000:]
        assert (run_dir / "config.yaml").stat().st_mtime_ns == config  # B wrote nothing into run.dir
        a.send_signal(signal.SIGTERM)  # torchrun passes it on: the trainer saves and exits
        a.wait(timeout=120)
        assert not alive(procs)
    finally:
        cleanup(procs, port)
    steps = [s for s, _ in losses(run_dir)]
    assert steps == list(range(1, steps[-1] + 1))  # one record per step
    latest = (run_dir / "checkpoints" / "latest").read_text()
    assert latest == offline.tag_for(steps[-1]) and "exiting for requeue" in log.read_text()
    for tag in tags(run_dir):
        assert offline.verify_collective(run_dir / "checkpoints" / tag) == []
    # A dead holder leaves no lock: every test that resumes a copy of base_run (whose .lock names a
    # process long gone) takes it, e.g. the ones below.


# ---- 2. SIGTERM to the deepspeed command stops every process ------------------------------------
def test_sigterm_to_the_deepspeed_command_checkpoints_and_leaves_no_process(tmp_path):
    """Before: the `deepspeed` runner died, its launch.py and both ranks trained on (orphans)."""
    run_dir, log = tmp_path / "run", tmp_path / "ds.log"
    ds, port = start(run_dir, ["train.steps=1000", "checkpoint.interval=0"], log, launcher="deepspeed", nproc=2)
    procs = process_tree(ds.pid)
    try:
        wait_for_step(run_dir, 2, ds, log)
        procs = process_tree(ds.pid)
        assert len(trainers(procs)) == 2, [p.cmdline()[:4] for p in procs]
        t0 = time.monotonic()
        os.kill(ds.pid, signal.SIGTERM)  # `kill -TERM <pid of deepspeed>`
        ds.wait(timeout=30)
        while alive(procs) and time.monotonic() - t0 < 90:
            time.sleep(0.2)
        left = [(p.pid, p.cmdline()[:4]) for p in alive(procs)]
        assert not left, f"still running {time.monotonic() - t0:.0f} s after SIGTERM: {left}"
    finally:
        cleanup(procs, port)
    steps = [s for s, _ in losses(run_dir)]
    stop = steps[-1]
    assert steps == list(range(1, stop + 1)) and stop < 1000
    assert (run_dir / "checkpoints" / "latest").read_text() == offline.tag_for(stop)
    # Each rank watches the launcher; whichever polls first logs it and the all-reduce stops both (CI saw rank 1 first).
    logs = {r: (run_dir / "logs" / f"rank{r}.log").read_text() for r in (0, 1)}
    assert any("has exited: stopping as on SIGTERM" in text for text in logs.values()), logs
    assert f"checkpoint saved at step {stop}" in logs[0]
    assert offline.verify_collective(run_dir / "checkpoints" / offline.tag_for(stop)) == []


def test_sigint_stops_like_sigterm_and_launchers_are_recognised():
    """Ctrl-C takes the checkpoint-and-exit path (before: KeyboardInterrupt, no checkpoint); a second one
    stops at once. The launcher commands whose exit stops training; a shell or pytest is none."""
    from megaspeech.train.stop import StopRequests, is_launcher
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    stop = StopRequests()
    try:
        stop.install()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.close()
        for s, h in old.items():
            signal.signal(s, h)
    assert is_launcher(["/venv/bin/python", "/venv/bin/deepspeed", "--num_gpus", "2"])
    assert is_launcher(["/venv/bin/python", "-u", "-m", "deepspeed.launcher.launch", "--world_info=e30="])
    assert is_launcher(["python3", "-m", "torch.distributed.run", "--nproc_per_node", "2"])
    assert is_launcher(["/usr/local/bin/torchrun", "launch/pretrain.py"])
    assert not is_launcher(["bash", "-c", "deepspeed launch/pretrain.py"])
    assert not is_launcher(["python", "-m", "pytest", "tests/faults"])


# ---- 3. a resume whose data plan changed ----------------------------------------------------------
def _manifest(d: Path, text: str) -> Path:
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(text)
    return d


def test_data_plan_changes_are_named(tmp_path):
    from megaspeech.data.loader import data_plan, plan_changes
    a, b = _manifest(tmp_path / "a", '{"shards": ["a"]}'), _manifest(tmp_path / "b", '{"shards": ["b"]}')
    moved = _manifest(tmp_path / "moved", '{"shards": ["a"]}')
    cfg = lambda *srcs: DataConfig(kind="shards", sources=[SourceConfig(**s) for s in srcs])  # noqa: E731
    saved = data_plan(cfg({"name": "t", "path": str(a)}), seed=1)
    assert plan_changes(saved, data_plan(cfg({"name": "t", "path": str(a)}), seed=1)) == []
    assert plan_changes(saved, data_plan(cfg({"name": "t", "path": str(moved)}), seed=1)) == []  # same bytes
    (other,) = plan_changes(saved, data_plan(cfg({"name": "t", "path": str(b)}), seed=1))
    assert "source 't' is another dataset" in other and str(a) in other and str(b) in other
    (seed,) = plan_changes(saved, data_plan(cfg({"name": "t", "path": str(a)}), seed=2))
    assert seed.startswith("run.seed 1 -> 2")
    added = plan_changes(saved, data_plan(cfg({"name": "t", "path": str(a)}, {"name": "u", "path": str(b)}), 1))
    assert added == [f"source 'u' added ({b.resolve()})"]
    mix = plan_changes(saved, data_plan(cfg({"name": "t", "path": str(a), "weight": 2.0, "epochs": 1}), 1))
    assert mix == ["source 't' weight 1.0 -> 2.0", "source 't' epochs None -> 1"]


def test_resume_with_another_seed_is_refused_unless_restart_is_asked_for(base_run, tmp_path):
    """Before: run.seed changed on resume went through silently with the old data position. The refusal
    is the trainer's check before any weight is read (in-process here: a refused run trains nothing);
    the restart is a real run."""
    from megaspeech.config.load import load_config
    from megaspeech.config.schema import PretrainConfig
    from megaspeech.train.data_plan import keep_data_position
    run_dir = copy_run(base_run, tmp_path / "run")
    step4 = run_dir / "checkpoints" / "step00000004"
    meta = offline.read_meta(step4)
    cfg = load_config(PretrainConfig, run_dir / "config.yaml")
    assert keep_data_position(cfg, meta, step4, True)
    cfg.run.seed = 99
    with pytest.raises(CheckpointError) as e:
        keep_data_position(cfg, meta, step4, True)
    assert f"the data differs from checkpoint {step4}'s: run.seed 1234 -> 99" in str(e.value)
    assert "run.data_plan_change=restart" in str(e.value)
    del meta["data_plan"]  # a checkpoint saved before plans were stored: its config is compared
    with pytest.raises(CheckpointError, match="run.seed 1234 -> 99"):
        keep_data_position(cfg, meta, step4, True)
    p = run(run_dir, ["train.steps=5", "run.seed=99", "run.data_plan_change=restart"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert "run.data_plan_change=restart" in p.stderr and "the data position starts over" in p.stderr
    assert [s for s, _ in losses(run_dir)] == [1, 2, 3, 4, 5]
    meta = json.loads((run_dir / "checkpoints" / "step00000005" / "meta.json").read_text())
    assert meta["data_plan"]["seed"] == 99 and meta["step"] == 5


# ---- 5. a checksum table that cannot vouch for the checkpoint -------------------------------------
@pytest.mark.parametrize("table", ["empty", "partial", "missing"])
def test_an_empty_or_partial_files_table_is_refused_and_auto_falls_back(base_run, tmp_path, table):
    """Before: an empty/partial table verified, so a flipped weight byte resumed unnoticed."""
    root = copy_run(base_run, tmp_path / "run") / "checkpoints"
    d = root / "step00000004"
    meta = json.loads((d / "meta.json").read_text())
    model = d / "mp_rank_00_model_states.pt"
    if table == "empty":
        meta["files"] = {}
    elif table == "partial":
        del meta["files"][model.name]
    else:
        del meta["files"]
    (d / "meta.json").write_text(json.dumps(meta))
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    (problem,) = offline.verify_collective(d)
    assert str(d / "meta.json") in problem
    assert (model.name in problem) if table == "partial" else ("nothing in" in problem and str(d) in problem)
    assert offline.find_resumable(root) == "step00000002"  # the older, verified one
    with pytest.raises(CheckpointError, match="meta.json"):
        offline.full_state_dict(d)


# ---- 7. every failure of a save is a named error -------------------------------------------------
def test_torch_zip_writer_error_on_a_full_disk_is_the_named_disk_full_error(base_run, tmp_path):
    """Before: `RuntimeError: [enforce fail at inline_container.cc:672] unexpected pos` and the partial
    step....tmp stayed on the full disk."""
    run_dir = copy_run(base_run, tmp_path / "run")
    root = run_dir / "checkpoints"
    p = run(run_dir, ["train.steps=6"], script="tests/helpers/write_faults_pretrain.py",
            env={"MEGASPEECH_TEST_ZIPFAIL": "step00000006.tmp/zero_pp_rank"})
    assert p.returncode != 0 and no_traceback_of_ours(p.stderr), p.stderr[-3000:]
    err = p.stderr
    assert f"saving checkpoint step00000006 in {root} failed: writing {root}/step00000006.tmp/zero_pp_rank" in err
    assert "the write stopped short (torch: [enforce fail at inline_container.cc:672]" in err
    assert "free; a checkpoint of this run needs about" in err and "latest` still names step00000004" in err
    assert not list(root.glob("*.tmp")) and tags(run_dir) == ["step00000002", "step00000004"]


def test_a_checkpoint_dir_it_may_not_write_is_named(base_run, tmp_path, monkeypatch):
    """Before: `Parent directory .../step00000005.tmp does not exist` (DeepSpeed swallows the failed
    mkdir, torch.save then fails). Now the save's first step (rank 0, before any rank writes; every rank
    then raises the agreed message, as for a full disk) names it; in-process, with the EACCES a non-root
    user gets in a chmod 555 directory (chmod does not stop root). tests/helpers/write_faults_pretrain.py
    (MEGASPEECH_TEST_READONLY) does the same in a real run."""
    from megaspeech.checkpoint import engine
    root = copy_run(base_run, tmp_path / "run") / "checkpoints"
    mkdir = os.mkdir

    def readonly_mkdir(path, *a, **k):
        if "step00000005.tmp" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return mkdir(path, *a, **k)
    monkeypatch.setattr(os, "mkdir", readonly_mkdir)
    (why,) = engine._prepare(root, "step00000005.tmp", 0)
    assert why.startswith(f"cannot write into {root} (permission denied: {root / 'step00000005.tmp'})")
    assert "chmod" in why and "run.dir" in why
    assert not list(root.glob("*.tmp")) and (root / "latest").read_text() == "step00000004"


def test_a_latest_of_garbage_bytes_falls_back_to_the_newest_verified(base_run, tmp_path, caplog):
    """Before: UnicodeDecodeError from run.resume=auto and from export's resolve, no fallback."""
    run_dir = copy_run(base_run, tmp_path / "run")
    root = run_dir / "checkpoints"
    (root / "latest").write_bytes(b"\xff\xfe\x00\x9c garbage")
    assert offline.find_resumable(root) == "step00000004"
    assert offline.resolve(run_dir) == root / "step00000004"  # what launch/export_hf.py resolves
    assert f"{root / 'latest'} does not hold a checkpoint name" in caplog.text
    assert offline.read_latest_quiet(root) is None


# ---- 9. a kill inside a save leaves no record of the unsaved step -------------------------------
def test_a_kill_inside_a_save_leaves_no_record_of_that_step(base_run, tmp_path):
    """Before: the step's record was logged before its save, and again when the resumed run redid it."""
    run_dir = copy_run(base_run, tmp_path / "run")
    p = run(run_dir, ["train.steps=6"], env={"MEGASPEECH_CRASH_IN_SAVE": "6"})
    assert p.returncode != 0
    assert [s for s, _ in losses(run_dir)] == [1, 2, 3, 4, 5]  # step 6 was never saved: not logged
    assert (run_dir / "checkpoints" / "latest").read_text() == "step00000004"
