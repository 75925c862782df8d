"""sbatch scripts for megaspeech tools: multi-node DeepSpeed training and job-array data preparation.

Launch recipe (PLATFORM.md lists two that worked here). We run ONE `srun` task per node, and each
task starts DeepSpeed's own launcher with `--no_ssh --node_rank $SLURM_NODEID`; the launcher then
spawns one rank per GPU on its node. We prefer this to one srun task per GPU with RANK/LOCAL_RANK/
WORLD_SIZE mapped from SLURM_* because:
  - the training processes get exactly the environment `deepspeed --num_gpus G tool.py` gives them
    on a workstation (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT, CUDA_VISIBLE_DEVICES), so a
    run behaves the same on a laptop, in CI and on the cluster, with no rank arithmetic of ours;
  - Slurm only has to bind a node, not a GPU per task, so it works whether or not the cluster has
    GRES/cgroup GPU binding configured, and on CPU (`--device cpu`) too;
  - DeepSpeed's `--launcher slurm` was not an option: it sets no RANK/MASTER_ADDR (PLATFORM.md).
The hostfile DeepSpeed needs (`host slots=G` per node) is written from the allocation.

Preemption and time limits. `#SBATCH --signal=B:USR1@S` makes Slurm send SIGUSR1 to the batch
shell S seconds before the time limit (B: = the batch shell only). The script traps it and forwards
it with `scancel --signal=USR1 $SLURM_JOB_ID`, which reaches every process of the job steps (not the
batch shell), i.e. the trainer ranks. The trainer saves a checkpoint and exits 0 on SIGUSR1. The
DeepSpeed launcher processes would die on SIGUSR1 (no handler), so the srun task sets its
disposition to ignored before exec'ing the launcher; ignored signals stay ignored across exec, and
the trainer installs its own handler, which overrides that. When the step has ended the script
runs `scontrol requeue $SLURM_JOB_ID` (up to `max_requeues` times, counted by
SLURM_RESTART_COUNT); the requeued job runs the same script with `run.resume=auto`, so the trainer
continues from RUN_DIR's latest checkpoint. Slurm's own preemption (PreemptMode=REQUEUE) and
`scancel` send SIGTERM, which the trainer handles the same way; `--requeue` lets Slurm requeue the
job on node failure too. Slurm holds a requeued job for about two minutes before it is eligible.

Job arrays (data preparation). Tools that split their work into numbered parts take the part index
and count as dotted overrides; their names are arguments (`index_key`, `count_key`) because each
tool names them itself. Array task i runs `tool --config C ... <index_key>=i <count_key>=N`, one
process, and a requeued task redoes only unfinished parts (megaspeech.data.shards resume rule).
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from typing import Literal

from megaspeech.config.load import check

LOG_PREFIX = "[megaspeech-slurm]"


@dataclass
class SlurmJob:
    """Everything an sbatch script needs. Paths should be absolute (the job runs in `workdir`)."""
    tool: str                      # the tool script, e.g. launch/pretrain.py
    config: str                    # YAML config given to the tool with --config
    log_dir: str                   # Slurm output, the script copy and the hostfile go here
    overrides: list[str] = field(default_factory=list)  # dotted overrides given to the tool
    tool_args: list[str] = field(default_factory=list)  # before --config, e.g. a subcommand ("text")
    workdir: str = "."
    launcher: Literal["deepspeed", "python"] = "deepspeed"
    nodes: int = 1
    gpus_per_node: int = 1         # ranks per node (DeepSpeed hostfile slots)
    device: Literal["gpu", "cpu"] = "gpu"  # cpu: request no GPUs from Slurm (ranks are CPU processes)
    cpus_per_task: int | None = None
    mem: str | None = None         # e.g. "0" (all of the node) or "64G"
    time: str | None = None        # Slurm time limit, e.g. "2-00:00:00"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    exclusive: bool = False
    job_name: str = "megaspeech"
    signal_secs: int = 300         # USR1 this long before the time limit (checkpoint time + margin)
    max_requeues: int = 20
    resume_override: str | None = "run.resume=auto"
    array: int | None = None       # number of array tasks (data-preparation tools)
    array_parallel: int | None = None  # at most this many array tasks at once (`%k`)
    index_key: str = "worker.index"
    count_key: str = "worker.count"
    python: str = sys.executable
    # MASTER_PORT = base + job id % 10000: jobs sharing a node differ, and 20000-29999 stays below
    # Linux's ephemeral port range (32768+), so no outgoing connection holds it by chance
    master_port_base: int = 20000
    env: dict[str, str] = field(default_factory=dict)
    sbatch_extra: list[str] = field(default_factory=list)  # raw `--flag=value` lines for #SBATCH

    def __post_init__(self):
        check(self.launcher in ("deepspeed", "python"), "launcher", "choose deepspeed or python")
        check(self.device in ("gpu", "cpu"), "device", "choose gpu or cpu")
        check(self.nodes >= 1, "nodes", f"must be >= 1, got {self.nodes}")
        check(self.gpus_per_node >= 1, "gpus_per_node", f"must be >= 1, got {self.gpus_per_node}")
        check(self.signal_secs >= 0, "signal_secs", "must be >= 0 seconds")
        check(self.max_requeues >= 0, "max_requeues", "must be >= 0")
        check(self.array is None or self.array >= 1, "array", "must be the number of array tasks (>= 1)")
        check(self.array is None or self.launcher == "python", "array",
              "job arrays are for single-process tools: use launcher=python (--launcher python)")
        check(self.launcher == "deepspeed" or self.nodes == 1, "nodes",
              "launcher=python runs one process: use nodes=1 (or launcher=deepspeed)")
        check(self.array_parallel is None or self.array is not None, "array_parallel", "needs array")
        for key in (self.index_key, self.count_key):
            check(key and "=" not in key and " " not in key, "index_key/count_key",
                  f"{key!r} must be a dotted config key such as worker.index")
        for k in self.env:
            check(k.isidentifier(), "env", f"{k!r} is not a valid environment variable name")


def _sbatch_lines(job: SlurmJob) -> list[str]:
    out_name = "%x-%A_%a.out" if job.array else "%x-%j.out"
    lines = [
        f"--job-name={job.job_name}",
        f"--nodes={job.nodes}",
        "--ntasks-per-node=1",
    ]
    if job.device == "gpu" and job.launcher == "deepspeed":
        lines.append(f"--gpus-per-node={job.gpus_per_node}")
    if job.cpus_per_task:
        lines.append(f"--cpus-per-task={job.cpus_per_task}")
    if job.mem is not None:
        lines.append(f"--mem={job.mem}")
    for flag, value in (("time", job.time), ("partition", job.partition),
                        ("account", job.account), ("qos", job.qos)):
        if value:
            lines.append(f"--{flag}={value}")
    if job.exclusive:
        lines.append("--exclusive")
    if job.array:
        spec = f"0-{job.array - 1}" + (f"%{job.array_parallel}" if job.array_parallel else "")
        lines.append(f"--array={spec}")
    lines += [
        f"--output={job.log_dir}/{out_name}",
        "--open-mode=append",      # a requeued job appends to the same log
        "--requeue",
        f"--signal=B:USR1@{job.signal_secs}",
        f"--chdir={job.workdir}",
    ]
    lines += list(job.sbatch_extra)
    return lines


def _tool_args(job: SlurmJob) -> list[str]:
    args = [job.tool, *job.tool_args, "--config", job.config, *job.overrides]
    if job.resume_override:
        args.append(job.resume_override)
    return args


def _step_command(job: SlurmJob) -> str:
    """The `srun ... &` line: the job step whose processes receive the forwarded SIGUSR1."""
    # Slurm 22.05-23.02 steps do not inherit the job's --cpus-per-task: without it the launcher and
    # all its ranks would be confined to one CPU wherever task/affinity or cgroups bind cores.
    cpus = job.cpus_per_task or '"$SLURM_CPUS_ON_NODE"'
    srun = f"srun --nodes={job.nodes} --ntasks-per-node=1 --cpus-per-task={cpus} --kill-on-bad-exit=1"
    if job.launcher == "python":
        cmd = [job.python, *_tool_args(job)]
        line = f"{srun} {shlex.join(cmd)}"
        if job.array:
            # expanded by the batch shell: every array task has its own SLURM_ARRAY_TASK_ID
            line += f' "{job.index_key}=$SLURM_ARRAY_TASK_ID" {shlex.quote(f"{job.count_key}={job.array}")}'
        return line + " &"
    return f'{srun} bash -c {shlex.quote(node_command(job))} "$HOSTFILE" "$MASTER_ADDR" "$MASTER_PORT" &'


def node_command(job: SlurmJob) -> str:
    """What each node's srun task runs (deepspeed launcher): `bash -c CMD HOSTFILE ADDR PORT`.

    Inside the task $0..$2 are those three arguments, and SLURM_NODEID is the task's own node
    index (the batch shell's would be 0 on every node)."""
    launcher = [job.python, "-m", "deepspeed.launcher.runner", "--hostfile", "$0", "--no_ssh",
                "--node_rank", "$SLURM_NODEID", "--master_addr", "$1", "--master_port", "$2"]
    inner = " ".join(f'"{a}"' if a.startswith("$") else shlex.quote(a) for a in launcher)
    return f'trap "" USR1; exec {inner} {shlex.join(_tool_args(job))}'


def render_sbatch(job: SlurmJob) -> str:
    """The complete sbatch script (bash) for `job`."""
    p = LOG_PREFIX
    head = ["#!/bin/bash", "# Generated by launch/submit.py. Regenerate rather than edit."]
    head += [f"#SBATCH {line}" for line in _sbatch_lines(job)]
    body = [
        "set -uo pipefail",
        *[f"export {k}={shlex.quote(v)}" for k, v in sorted(job.env.items())],
        f'echo "{p} job $SLURM_JOB_ID restart ${{SLURM_RESTART_COUNT:-0}} on $SLURM_JOB_NODELIST at $(date -u +%FT%TZ)"',
        "",
        "preempted=0",
        "forward_preemption() {",
        "  preempted=1",
        f'  echo "{p} SIGUSR1: asking the job step to checkpoint and exit at $(date -u +%FT%TZ)"',
        '  scancel --signal=USR1 "$SLURM_JOB_ID"  # every process of the job steps, not this shell',
        "}",
        "trap forward_preemption USR1",
        "",
    ]
    if job.launcher == "deepspeed":
        body += [
            'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
            f"MASTER_PORT=$(( {job.master_port_base} + SLURM_JOB_ID % 10000 ))",
            f'HOSTFILE={shlex.quote(job.log_dir)}/hostfile-"$SLURM_JOB_ID"',
            f'scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/$/ slots={job.gpus_per_node}/" > "$HOSTFILE"',
            "",
        ]
    body += [
        'if [ "$preempted" = 0 ]; then',
        f"  {_step_command(job)}",
        "  step=$!",
        "  # `wait` returns early when a trapped signal arrives: wait until srun has really ended",
        '  while :; do wait "$step"; rc=$?; kill -0 "$step" 2>/dev/null || break; done',
        "else",
        "  rc=0",
        "fi",
        "",
        'if [ "$preempted" = 1 ]; then',
        f'  if [ "${{SLURM_RESTART_COUNT:-0}}" -lt {job.max_requeues} ]; then',
        f'    echo "{p} step ended with $rc; requeueing job $SLURM_JOB_ID to resume"',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "    exit 0",
        "  fi",
        f'  echo "{p} not requeueing: already restarted ${{SLURM_RESTART_COUNT:-0}} times (max {job.max_requeues})"',
        "fi",
        f'echo "{p} finished with exit code $rc at $(date -u +%FT%TZ)"',
        'exit "$rc"',
    ]
    return "\n".join(head + [""] + body) + "\n"
