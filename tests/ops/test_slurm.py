"""launch/submit.py against a real Slurm (slurm-wlm's slurmctld + slurmd on localhost).

The jobs run the real tools: launch/pretrain.py on configs/tiny.yaml with 2 CPU ranks (DeepSpeed's
launcher, one srun task), and launch/prepare_data.py as a job array. Needs root and
`apt-get install -y slurm-wlm`; the tests fail (never skip) without them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megaspeech.ops.local_slurm import LocalSlurm
from megaspeech.ops.slurm import SlurmJob, node_command, render_sbatch

REPO = Path(__file__).resolve().parents[2]
STEPS = 8


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


def slurm_log(run: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((run / "slurm").glob("*.out")))


def submit_tiny(cluster: LocalSlurm, run: Path) -> str:
    """The tiny config on 1 node x 2 CPU ranks; checkpoints only at the end and on a signal."""
    return submit(cluster, "--slurm", "configs/slurm/local_cpu.yaml", "--config", "configs/tiny.yaml",
                  "--tool", "launch/pretrain.py", "--nodes", "1", f"run.dir={run}", f"train.steps={STEPS}", "checkpoint.interval=0", "train.progress_bar=false")


@pytest.fixture(scope="module")
def reference_run(cluster, tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "run"
    job = submit_tiny(cluster, run)
    return run, cluster.wait_job(job, timeout=240)


def test_script_parses_and_quotes_overrides(tmp_path):
    job = SlurmJob(tool="launch/pretrain.py", config="c.yaml", log_dir=str(tmp_path), nodes=4,
                   gpus_per_node=8, overrides=["run.name=two words", "train.steps=5"])
    script = render_sbatch(job)
    f = tmp_path / "job.sbatch"
    f.write_text(script)
    subprocess.run(["bash", "-n", str(f)], check=True)
    srun = [line for line in script.splitlines() if line.strip().startswith("srun ")]
    assert len(srun) == 1 and '--nodes=4 --ntasks-per-node=1 --cpus-per-task="$SLURM_CPUS_ON_NODE"' in srun[0]
    # the per-task command survives two levels of quoting with the node rank left to each task
    inner = srun[0].split("bash -c ", 1)[1]
    words = subprocess.run(["bash", "-c", f"printf '%s\\n' {inner.rstrip(' &')}"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert '--node_rank "$SLURM_NODEID"' in words[0] and "'run.name=two words'" in words[0]
    assert words[0].endswith("run.resume=auto")
    assert words[1:] == ["", "", ""]  # $HOSTFILE $MASTER_ADDR $MASTER_PORT, unset outside a job
    assert "#SBATCH --gpus-per-node=8" in script and "#SBATCH --signal=B:USR1@300" in script


def test_preset_values_are_checked(tmp_path):
    preset = tmp_path / "cluster.yaml"
    preset.write_text("time: 48:00:00\n")  # YAML 1.1 reads this as the integer 172800
    r = subprocess.run([sys.executable, "launch/submit.py", "--slurm", str(preset), "--config", "configs/tiny.yaml",
                        "--tool", "launch/pretrain.py", "--dry-run"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "time: 172800 is not a valid value" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "launch/submit.py", "--slurm", "configs/slurm/local_cpu.yaml",
                        "--config", "configs/tiny.yaml", "--tool", "launch/pretrain.py", "--cpus-per-task", "1",
                        "--dry-run"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "#SBATCH --cpus-per-task=1" in r.stdout and "export OMP_NUM_THREADS=1" in r.stdout  # flag wins


def test_two_rank_job_trains_to_completion(reference_run):
    run, info = reference_run
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, slurm_log(run))
    assert info["Restarts"] == "0"
    assert [r["step"] for r in metrics(run)] == list(range(1, STEPS + 1))
    assert (run / "logs" / "rank0.log").exists() and (run / "logs" / "rank1.log").exists()  # 2 ranks
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step{STEPS:08d}"


def test_preemption_checkpoints_requeues_and_resumes(cluster, reference_run, tmp_path):
    ref_run, _ = reference_run
    run = tmp_path / "run"
    job = submit_tiny(cluster, run)
    deadline = time.monotonic() + 180
    while len(metrics(run)) < 2:  # training is under way (signal handlers installed)
        assert time.monotonic() < deadline, slurm_log(run) + cluster.logs()
        time.sleep(0.2)
    # what Slurm does --signal-secs before the time limit: SIGUSR1 to the batch shell only
    cluster.run(["scancel", "--signal=USR1", "--batch", job])
    info = cluster.wait_job(job, timeout=240)
    log = slurm_log(run)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, log)
    assert info["Restarts"] == "1", log
    saved = sorted(p.name for p in (run / "checkpoints").glob("step*"))
    k = int(saved[0][len("step"):])
    assert saved == [f"step{k:08d}", f"step{STEPS:08d}"] and 2 <= k < STEPS, (saved, log)  # mid-run
    assert f"checkpoint saved at step {k}, exiting for requeue" in log and "requeueing" in log
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), log  # resumed at k+1, no redo
    # exact resume: the same losses as the uninterrupted run, step for step
    ref = {r["step"]: r["loss"] for r in metrics(ref_run)}
    assert [r["loss"] for r in rows] == pytest.approx([ref[r["step"]] for r in rows], rel=1e-6, abs=0)


def test_two_node_recipe_matches_one_node(reference_run, tmp_path):
    """The per-node command of a 2-node x 1-rank script, run as two "nodes" on this host.

    Debian's slurmd cannot run twice on one host (no --enable-multiple-slurmd), so this runs
    what each node's srun task would: the same command with SLURM_NODEID 0 and 1, a 2-host
    hostfile (two names for this host) and the first host as MASTER_ADDR. Two launchers must
    form one world of 2 ranks that trains like the one-node 2-rank job."""
    ref_run, _ = reference_run
    run = tmp_path / "run"
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    job = SlurmJob(tool=str(REPO / "launch/pretrain.py"), config=str(REPO / "configs/tiny.yaml"),
                   log_dir=str(tmp_path), nodes=2, gpus_per_node=1, device="cpu",
                   overrides=[f"run.dir={run}", "train.steps=1", "train.progress_bar=false"])
    port = str(29000 + int(time.time()) % 1000)
    nodes = [subprocess.Popen(["bash", "-c", node_command(job), str(hostfile), "localhost", port], cwd=REPO,
                              env={**os.environ, "SLURM_NODEID": str(i), "OMP_NUM_THREADS": "1"},
                              stdout=open(tmp_path / f"node{i}.log", "w"), stderr=subprocess.STDOUT)
             for i in range(2)]
    codes = [p.wait(timeout=240) for p in nodes]
    logs = "\n".join((tmp_path / f"node{i}.log").read_text() for i in range(2))
    assert codes == [0, 0], logs
    assert logs.count("dist_world_size=2") == 2 and "'127.0.0.1': [1]" in logs  # node 1 holds rank 1
    ref = [r["loss"] for r in metrics(ref_run)][:1]
    assert [r["loss"] for r in metrics(run)] == pytest.approx(ref, rel=1e-6, abs=0)


def test_data_prep_job_array(cluster, tmp_path):
    out = tmp_path / "text"
    job = submit(cluster, "--config", "configs/data/demo.yaml", "--tool", "launch/prepare_data.py",
                 "--tool-arg", "text", "--launcher", "python", "--array", "2",
                 "--index-key", "text.worker", "--count-key", "text.num_workers", "--run-dir-key", "text.out_dir",
                 f"corpora=[files:{REPO}/megaspeech/**/*.py]", f"text.out_dir={out}",
                 "text.parts=2", "text.max_tokens=4000")
    for i in range(2):
        info = cluster.wait_job(f"{job}_{i}", timeout=120)
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, slurm_log(out))
    manifest = json.loads((out / "manifest.json").read_text())
    parts = sorted(p.name for p in out.glob("part-*.manifest.json"))
    assert parts == ["part-00000.manifest.json", "part-00001.manifest.json"], slurm_log(out)
    assert json.dumps(manifest).count("part-0000") >= 2  # the dataset lists both workers' shards
