"""Submit a megaspeech tool to Slurm (or print the sbatch script with --dry-run).

Training, N nodes x G GPUs, from the same YAML config and overrides the tool takes (cluster
settings from a preset, configs/slurm/*.yaml, or flags):
  python launch/submit.py --slurm configs/slurm/h100.yaml --nodes 16 \\
      --config configs/9b.yaml --tool launch/pretrain.py train.steps=1000
Data preparation as a job array of 64 single-process workers (each gets index/count overrides):
  python launch/submit.py --config configs/data/demo.yaml --tool launch/prepare_data.py --tool-arg text \\
      --launcher python --array 64 --index-key text.worker --count-key text.num_workers \\
      --run-dir-key text.out_dir --time 4:00:00

The job requeues itself on SIGUSR1 (sent --signal-secs before the time limit) after the trainer
has checkpointed, and resumes with run.resume=auto. See megaspeech/ops/slurm.py for the recipe.
Slurm logs, the script and the hostfile go to --log-dir, by default <run.dir>/slurm.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from megaspeech.config.load import ConfigError, apply_overrides, load_yaml_tree
from megaspeech.fs import write_atomic
from megaspeech.ops.slurm import SlurmJob, render_sbatch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--slurm", default=None, metavar="FILE",
                   help="cluster preset YAML (configs/slurm/*.yaml): defaults for the flags below, "
                        "keys spelled like them (gpus_per_node: 8); flags given here win")
    p.add_argument("--config", required=True, help="the tool's YAML config")
    p.add_argument("--tool", required=True, help="tool script, e.g. launch/pretrain.py")
    p.add_argument("--tool-arg", action="append", default=[], metavar="ARG",
                   help="argument placed before --config, e.g. a subcommand (repeatable)")
    p.add_argument("--launcher", choices=["deepspeed", "python"], default="deepspeed",
                   help="deepspeed: one DeepSpeed launcher per node (training); python: one process")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=1, help="ranks per node")
    p.add_argument("--device", choices=["gpu", "cpu"], default="gpu",
                   help="cpu: ask Slurm for no GPUs (CPU ranks, e.g. the tiny config)")
    p.add_argument("--cpus-per-task", type=int, default=None)
    p.add_argument("--mem", default=None, help='per-node memory, e.g. "0" for all of it')
    p.add_argument("--time", default=None, help="time limit, e.g. 2-00:00:00")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--qos", default=None)
    p.add_argument("--exclusive", action="store_true")
    p.add_argument("--job-name", default=None, help="default: the tool's name")
    p.add_argument("--signal-secs", type=int, default=300,
                   help="send SIGUSR1 this many seconds before the time limit (checkpoint time + margin)")
    p.add_argument("--max-requeues", type=int, default=20)
    p.add_argument("--resume-override", default=None,
                   help='override added so a requeued job resumes (default "run.resume=auto" for '
                        'deepspeed, none for python; "" for none)')
    p.add_argument("--array", type=int, default=None, help="number of job-array tasks")
    p.add_argument("--array-parallel", type=int, default=None, help="at most this many at once")
    p.add_argument("--index-key", default="worker.index", help="override the array task index goes to")
    p.add_argument("--count-key", default="worker.count", help="override the array size goes to")
    p.add_argument("--run-dir-key", default="run.dir", help="config key of the tool's output dir")
    p.add_argument("--log-dir", default=None, help="default: <value of --run-dir-key>/slurm")
    p.add_argument("--python", default=sys.executable, help="python on the compute nodes")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="exported in the job (repeatable), e.g. OMP_NUM_THREADS=8")
    p.add_argument("--sbatch", action="append", default=[], metavar="FLAG",
                   help="extra #SBATCH line (repeatable), e.g. --sbatch=--constraint=h100")
    p.add_argument("--dry-run", action="store_true", help="print the script; write and submit nothing")
    p.add_argument("overrides", nargs="*", help="dotted overrides for the tool, e.g. train.steps=20")
    return p


def _lookup(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def job_from_args(args: argparse.Namespace) -> SlurmJob:
    """Resolve paths and the config (base: inheritance + overrides) into a SlurmJob."""
    tool = Path(args.tool).resolve()
    if not tool.is_file():
        raise ConfigError(f"--tool {args.tool}: no such file (give the tool script, e.g. launch/pretrain.py)")
    config = Path(args.config).resolve()
    tree = apply_overrides(load_yaml_tree(config), args.overrides)  # fails early on a bad config
    if args.log_dir:
        log_dir = Path(args.log_dir)
    else:
        run_dir = _lookup(tree, args.run_dir_key)
        if not run_dir:
            raise ConfigError(f"{config}: no {args.run_dir_key} to put Slurm logs under; set it, "
                              f"pass --run-dir-key with the tool's output key, or pass --log-dir")
        log_dir = Path(str(run_dir)) / "slurm"
    env = {}
    for item in args.env:
        if "=" not in item:
            raise ConfigError(f"--env {item!r} must look like KEY=VALUE")
        k, v = item.split("=", 1)
        env[k] = v
    resume = args.resume_override
    if resume is None:
        resume = "run.resume=auto" if args.launcher == "deepspeed" else ""
    return SlurmJob(
        tool=str(tool), config=str(config), log_dir=str(log_dir.resolve()), overrides=list(args.overrides),
        tool_args=list(args.tool_arg), workdir=os.getcwd(), launcher=args.launcher, nodes=args.nodes,
        gpus_per_node=args.gpus_per_node, device=args.device, cpus_per_task=args.cpus_per_task, mem=args.mem, time=args.time,
        partition=args.partition, account=args.account, qos=args.qos, exclusive=args.exclusive,
        job_name=args.job_name or tool.stem, signal_secs=args.signal_secs, max_requeues=args.max_requeues,
        resume_override=resume or None, array=args.array, array_parallel=args.array_parallel,
        index_key=args.index_key, count_key=args.count_key, python=args.python, env=env,
        sbatch_extra=list(args.sbatch),
    )


def submit(job: SlurmJob) -> tuple[str, Path]:
    """Write the script into job.log_dir (atomically) and sbatch it; returns (job id, script path)."""
    if shutil.which("sbatch") is None:
        raise RuntimeError("sbatch not found on PATH: run on a Slurm login node (or use --dry-run)")
    log_dir = Path(job.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    script = log_dir / f"{job.job_name}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    write_atomic(script, render_sbatch(job))
    res = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"sbatch {script} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout.strip().split(";")[0], script


def apply_preset(p: argparse.ArgumentParser, path: str) -> None:
    """Use a cluster preset's values as the parser's defaults (explicit flags still override)."""
    tree = load_yaml_tree(path)
    allowed = {a.dest for a in p._actions} - {"help", "slurm", "config", "tool", "overrides", "dry_run"}
    unknown = sorted(set(tree) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; allowed: {sorted(allowed)}")
    if "env" in tree and isinstance(tree["env"], dict):  # env: {OMP_NUM_THREADS: 8} reads best in YAML
        tree["env"] = [f"{k}={v}" for k, v in tree["env"].items()]
    actions = {a.dest: a for a in p._actions}
    for key, value in tree.items():
        a = actions[key]
        if isinstance(a, (argparse._StoreTrueAction,)):
            ok = isinstance(value, bool)
        elif isinstance(a, argparse._AppendAction):
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif a.type is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:  # YAML reads 48:00:00 as a base-60 integer: times and partitions must be quoted strings
            ok = isinstance(value, str)
        if not ok or (a.choices and value not in a.choices):
            want = f"one of {list(a.choices)}" if a.choices else (a.type or str).__name__
            raise ConfigError(f"{path}: {key}: {value!r} is not a valid value ({want}; quote times like \"48:00:00\")")
    p.set_defaults(**tree)


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    known, _ = p.parse_known_args(argv)
    try:
        if known.slurm:
            apply_preset(p, known.slurm)
        args = p.parse_args(argv)
        job = job_from_args(args)
    except ConfigError as e:
        p.exit(2, f"submit: config error: {e}\n")
    if args.dry_run:
        sys.stdout.write(render_sbatch(job))
        return 0
    try:
        job_id, script = submit(job)
    except RuntimeError as e:
        p.exit(1, f"submit: {e}\n")
    print(f"submitted job {job_id}: script {script}, logs in {job.log_dir}")
    print(job_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
