"""A real one-node Slurm cluster on localhost, for tests and for trying launch/submit.py.

Runs Debian's slurm-wlm daemons (`apt-get install slurm-wlm`, Slurm 22.05 in Debian 12) from a
generated slurm.conf in a temp dir: slurmctld + slurmd in the foreground as our children, no
munge (AuthType=auth/none and CredType=cred/none, which 22.05 still ships), proctrack/linuxproc
(no cgroups needed inside containers), select/cons_tres on a CPU-only node. Client commands find
the cluster through SLURM_CONF in `LocalSlurm.env`. Must run as root (slurmd starts job steps as
the submitting user). The node is named after this host so that `scontrol show hostnames` gives a
name that resolves, as on a real cluster.

    with LocalSlurm(tmpdir, cpus=2) as cluster:
        subprocess.run(["sbatch", "job.sh"], env=cluster.env)
        cluster.wait_job(job_id, timeout=120)

Or by hand: `python -m megaspeech.ops.local_slurm DIR` starts it and prints the SLURM_CONF to
export; Ctrl-C (or SIGTERM) stops it. Then e.g. `python launch/submit.py --config configs/tiny.yaml
--tool launch/pretrain.py --gpus-per-node 2 --device cpu --cpus-per-task 2`.
"""
from __future__ import annotations

import getpass
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
INSTALL_HINT = "install Slurm with `apt-get install -y slurm-wlm` (Debian 12: Slurm 22.05)"


def find_binary(name: str) -> str:
    path = shutil.which(name) or next((f"{d}/{name}" for d in SBIN_DIRS if os.access(f"{d}/{name}", os.X_OK)), None)
    if path is None:
        raise RuntimeError(f"{name} not found on PATH or in {SBIN_DIRS}: {INSTALL_HINT}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(root: Path, node: str, cpus: int, memory_mb: int, ctld_port: int, slurmd_port: int,
               first_job_id: int) -> str:
    user = getpass.getuser()
    return f"""\
ClusterName=megaspeech-local
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/none
CredType=cred/none
SlurmUser={user}
SlurmdUser={user}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
FirstJobId={first_job_id}
KillWait=30
MinJobAge=600
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


class LocalSlurm:
    """Start slurmctld + slurmd under `root`; stop them (and cancel every job) on exit."""

    def __init__(self, root: str | Path, cpus: int = 2, memory_mb: int = 2000):
        self.root = Path(root).resolve()
        self.cpus, self.memory_mb = cpus, memory_mb
        self.node = socket.gethostname().split(".")[0]
        self.procs: list[subprocess.Popen] = []
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        for var in ("SLURM_JOB_ID", "SLURM_JOBID"):  # we may ourselves run inside a Slurm job
            self.env.pop(var, None)

    def __enter__(self) -> "LocalSlurm":
        if os.geteuid() != 0:
            raise RuntimeError("LocalSlurm needs root: slurmd must start job steps (run the tests as root, as CI does)")
        try:
            socket.gethostbyname(self.node)
        except OSError:
            raise RuntimeError(f"host name {self.node!r} does not resolve; add it to /etc/hosts") from None
        ctld, slurmd = find_binary("slurmctld"), find_binary("slurmd")
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # Random job ids: job scripts derive MASTER_PORT from the id, and two test clusters running
        # at once (two CI jobs, two developers) must not hand their jobs the same port.
        first_job_id = random.Random().randrange(1000, 10_000_000)
        self.conf.write_text(slurm_conf(self.root, self.node, self.cpus, self.memory_mb,
                                        _free_port(), _free_port(), first_job_id))
        # proctrack/linuxproc and task/none use no cgroups; slurmd still reads cgroup.conf if present
        (self.root / "cgroup.conf").write_text("CgroupPlugin=autodetect\nIgnoreSystemd=yes\n")
        try:
            # -D: stay in the foreground as our child; -i: ignore state left by an earlier run
            self._start([ctld, "-D", "-i", "-f", str(self.conf)], "slurmctld")
            self._start([slurmd, "-D", "-f", str(self.conf), "-N", self.node], "slurmd")
            self._wait_idle(timeout=60)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self, cmd: list[str], name: str) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "w")
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL))
        log.close()

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode}; see {self.root}/log: {self.logs()}")
            r = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False)
            state = r.stdout.strip()
            if r.returncode == 0 and state.startswith("idle"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"Slurm node not idle after {timeout}s (state {state!r}); logs: {self.logs()}")

    def run(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def job_info(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...); {} once forgotten."""
        r = self.run(["scontrol", "-o", "show", "job", job_id], check=False)
        if r.returncode != 0:
            return {}
        info = {}
        for tok in r.stdout.split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                info.setdefault(k, v)
        return info

    def wait_job(self, job_id: str, timeout: float, release_requeued: bool = True) -> dict[str, str]:
        """Wait until the job has ended; returns its final job_info.

        Slurm keeps a requeued job pending for ~2 minutes (BeginTime); with release_requeued we
        make it eligible 3 s later (`scontrol update StartTime=now+3`), which users may do too."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        released: set[str] = set()  # restart counts already released (release each requeue once)
        while time.monotonic() < deadline:
            info = self.job_info(job_id)
            state = info.get("JobState", "")
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                         "BOOT_FAIL", "DEADLINE", "PREEMPTED"):
                return info
            restarts = info.get("Restarts", "?")
            if release_requeued and state == "PENDING" and info.get("Reason") == "BeginTime" \
                    and restarts not in released:
                # Not `now`: slurmd compares credential times at 1 s resolution, and a relaunch in
                # the same second as the requeue is refused ("Job credential revoked").
                self.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now+3"], check=False)
                released.add(restarts)
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} not finished after {timeout}s: {info}")

    def logs(self, tail: int = 20) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            lines = f.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"== {f.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def __exit__(self, *exc) -> None:
        if any(p.poll() is None for p in self.procs):
            # cancel jobs first so slurmstepd kills their processes before the daemons go
            self.run(["scancel", "--full", "--user", getpass.getuser()], check=False)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                r = self.run(["squeue", "-h", "-t", "all", "-o", "%i %T"], check=False)
                if r.returncode != 0 or not any(s in r.stdout for s in ("RUNNING", "COMPLETING", "PENDING")):
                    break
                time.sleep(0.5)
        for p in reversed(self.procs):  # slurmd first, then slurmctld
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/megaspeech-slurm")
    # Ctrl-C or `kill PID` stops the daemons (SIGINT is ignored in a background job, hence TERM too)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_stop)
    try:
        with LocalSlurm(root) as cluster:
            print(f"Slurm is up. In another shell: export SLURM_CONF={cluster.conf}  "
                  f"(Ctrl-C or kill {os.getpid()} stops it)", flush=True)
            while all(p.poll() is None for p in cluster.procs):
                time.sleep(1)
    except _Stop:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
