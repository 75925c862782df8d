"""A training stage's child process: a SIGTERM to the pipeline stops the child too (none left behind);
its processes share the machine's cores unless OMP_NUM_THREADS says otherwise."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from megaspeech.pipeline.progress import ROOT, child_threads


def test_sigterm_reaches_the_training_child(tmp_path):
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    parent = ("import sys; from megaspeech.pipeline.progress import run_child; "
              f"sys.exit(run_child([sys.executable, '-c', {child!r}], lambda: None, every=0.1))")
    p = subprocess.Popen([sys.executable, "-c", parent], cwd=ROOT)
    for _ in range(300):
        if pid_file.is_file() and pid_file.read_text():
            break
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 128 + signal.SIGTERM
    try:
        os.kill(pid, 0)  # reaped by run_child's wait: the pid no longer exists
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive


def test_training_processes_share_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert (child_threads(1), child_threads(2), child_threads(16)) == ("8", "4", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert child_threads(1) == "3"


def test_eta_after_a_resume_counts_only_this_invocations_steps(tmp_path, monkeypatch):
    from megaspeech.pipeline import progress
    metrics = tmp_path / "metrics.jsonl"
    row = lambda step: json.dumps({"step": step, "loss": 1.0}) + "\n"
    metrics.write_text("".join(row(i) for i in range(1, 28)))  # the first run logged 1..27
    clock = iter([1000.0, 1060.0])
    monkeypatch.setattr(progress.time, "time", lambda: next(clock))
    lines = []
    poll = progress.progress_poller(metrics, "pretrain", 150, lines.append)
    with metrics.open("a") as f:  # resumed from the step-25 checkpoint: 26..31 in 60 s
        f.write("".join(row(i) for i in range(26, 32)))
    poll()
    assert lines == ["[pretrain] step 31/150 (21%) eta 19m50s"]  # 10 s/step x 119 steps left


def test_a_trainer_stopped_by_a_signal_does_not_finish_the_stage(tmp_path, monkeypatch):
    """The trainer saves and exits 0 on SIGTERM/SIGUSR1 (for a requeue); the stage must not count that
    as done, or export and eval run on a half-trained model."""
    import types

    import pytest

    from megaspeech.pipeline import progress
    last = {"step": 62}

    def fake_child(cmd, poll, env=None):
        (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, last["step"] + 1)))
        return 0
    monkeypatch.setattr(progress, "run_child", fake_child)
    ctx = types.SimpleNamespace(dir=lambda stage: tmp_path, progress=lambda line: None)
    section = types.SimpleNamespace(config="configs/tiny.yaml", nproc=1)
    with pytest.raises(RuntimeError, match="stopped at step 62 of 150.*rerun the pipeline command"):
        progress.train_tool(ctx, "pretrain", "pretrain.py", section, [], 150)
    last["step"] = 150
    assert progress.train_tool(ctx, "pretrain", "pretrain.py", section, [], 150)[-1] == {"step": 150}


def test_tokenizer_eta_after_a_resume(monkeypatch):
    """The tokenizer stage's console line: after a resume from step 500 the rate counts steps 501.. only."""
    import types

    from megaspeech.pipeline import stages
    from megaspeech.speech import tokenizer_training as train_tokenizer

    def fake_train(cfg, log):
        log("resumed from RUN/checkpoint.pt at step 500")
        log("step=510 ce=0.7")
        return {"step": 510}
    monkeypatch.setattr(train_tokenizer, "train", fake_train)
    clock = iter([1000.0, 1050.0])  # 10 steps in 50 s
    monkeypatch.setattr(stages.time, "time", lambda: next(clock))
    lines = []
    cfg = types.SimpleNamespace(train=types.SimpleNamespace(steps=2300, max_seconds=0.0),
                                run=types.SimpleNamespace(dir="RUN"), tokenizer=types.SimpleNamespace(codebook_size=1024))
    stages.tokenizer_run(types.SimpleNamespace(progress=lines.append), cfg, {})
    assert lines == ["[tokenizer] step 510/2300 (22%) eta 2h29m"]  # 5 s/step x 1,790 steps
