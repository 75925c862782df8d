"""launch/submit.py against a real Slurm (slurm-wlm's slurmctld + slurmd on localhost).

Needs root and `apt-get install -y slurm-wlm`; the tests fail (never skip) without them.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megaspeech.ops.local_slurm import LocalSlurm
from megaspeech.ops.slurm import SlurmJob, render_sbatch

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tests" / "ops" / "counter_tool.py"
ARRAY_TOOL = REPO / "tests" / "ops" / "part_tool.py"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalSlurm(tmp_path_factory.mktemp("slurm"), cpus=2) as c:
        yield c


def submit(cluster: LocalSlurm, *args: str) -> str:
    r = subprocess.run([sys.executable, "launch/submit.py", *args], cwd=REPO, env=cluster.env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


def metrics(run: Path) -> list[dict]:
    f = run / "metrics.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


def training_args(tmp_path: Path, run: Path, steps: int, step_seconds: float) -> list[str]:
    cfg = tmp_path / "counter.yaml"
    cfg.write_text(f"run:\n  dir: {run}\nsteps: {steps}\nstep_seconds: {step_seconds}\n")
    return ["--config", str(cfg), "--tool", str(TOOL), "--nodes", "1", "--gpus-per-node", "2",
            "--device", "cpu", "--cpus-per-task", "2", "--env", "OMP_NUM_THREADS=1"]


def slurm_log(run: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((run / "slurm").glob("*.out")))


def test_script_parses_and_quotes_overrides(tmp_path):
    job = SlurmJob(tool="launch/pretrain.py", config="c.yaml", log_dir=str(tmp_path), nodes=4,
                   gpus_per_node=8, overrides=["run.name=two words", "train.steps=5"])
    script = render_sbatch(job)
    f = tmp_path / "job.sbatch"
    f.write_text(script)
    subprocess.run(["bash", "-n", str(f)], check=True)
    srun = [line for line in script.splitlines() if line.strip().startswith("srun ")]
    assert len(srun) == 1 and "--nodes=4 --ntasks-per-node=1" in srun[0]
    # the per-task command survives two levels of quoting with the node rank left to each task
    inner = srun[0].split("bash -c ", 1)[1]
    words = subprocess.run(["bash", "-c", f"printf '%s\\n' {inner.rstrip(' &')}"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert '--node_rank "$SLURM_NODEID"' in words[0] and "'run.name=two words'" in words[0]
    assert words[1:] == ["", "", ""]  # $HOSTFILE $MASTER_ADDR $MASTER_PORT, unset outside a job
    assert "#SBATCH --gpus-per-node=8" in script and "#SBATCH --signal=B:USR1@300" in script


def test_two_rank_job_trains_to_completion(cluster, tmp_path):
    run = tmp_path / "run"
    job = submit(cluster, *training_args(tmp_path, run, steps=5, step_seconds=0.0))
    info = cluster.wait_job(job, timeout=120)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, slurm_log(run))
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["world"] == 2 and r["total"] == 3 * r["step"] for r in rows)  # ranks 0+1 each step
    assert json.loads((run / "checkpoints" / "latest.json").read_text()) == {"step": 5, "total": 15}


def test_preemption_checkpoints_requeues_and_resumes(cluster, tmp_path):
    run = tmp_path / "run"
    steps = 40
    job = submit(cluster, *training_args(tmp_path, run, steps=steps, step_seconds=0.25))
    deadline = time.monotonic() + 90
    while len(metrics(run)) < 3:  # training is under way
        assert time.monotonic() < deadline, slurm_log(run) + cluster.logs()
        time.sleep(0.2)
    # what Slurm does --signal-secs before the time limit: SIGUSR1 to the batch shell only
    cluster.run(["scancel", "--signal=USR1", "--batch", job])
    info = cluster.wait_job(job, timeout=150)
    log = slurm_log(run)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, log)
    assert info["Restarts"] == "1", log
    rows = metrics(run)
    first = [r["step"] for r in rows if r["restart"] == 0]
    second = [r["step"] for r in rows if r["restart"] == 1]
    k = first[-1]
    assert 3 <= k < steps, log  # stopped mid-run ...
    assert first == list(range(1, k + 1)) and second == list(range(k + 1, steps + 1))  # ... resumed at k+1
    assert all(r["total"] == 3 * r["step"] for r in rows)  # state carried over exactly
    assert "checkpoint at step" in log and "requeueing" in log


def test_job_array_runs_each_part_once(cluster, tmp_path):
    out = tmp_path / "parts"
    cfg = tmp_path / "parts.yaml"
    cfg.write_text(f"out: {out}\n")
    job = submit(cluster, "--config", str(cfg), "--tool", str(ARRAY_TOOL), "--launcher", "python",
                 "--array", "3", "--index-key", "part.index", "--count-key", "part.count",
                 "--log-dir", str(tmp_path / "logs"))
    for i in range(3):
        info = cluster.wait_job(f"{job}_{i}", timeout=90)
        assert info["JobState"] == "COMPLETED", info
    assert sorted(p.name for p in out.iterdir()) == ["part-0-of-3", "part-1-of-3", "part-2-of-3"]
