"""Checkpoint I/O: our atomic DeepSpeed save / load (megaspeech/checkpoint/engine.py) vs a plain `torch.save` /
`torch.load` of the same state (model + optimizer state dicts) in the same run, same process.

    python benchmarks/checkpoint_io.py --config configs/tiny.yaml [model.hidden_size=512 ...] [--reps 3]

Starts a 1-process group by itself (or runs under torchrun). GB/s = bytes / seconds, each side's own
bytes; the median of --reps interleaved repetitions. Saves include an fsync of every file written
(bytes on disk, not in the page cache) on both sides; loads read what was just written.
Prints save/load GB/s per side, then `ratio=` (our round trip throughput / torch's) last.
"""
from __future__ import annotations

import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from megaspeech.config.cli import parse_args
from megaspeech.config.schema import PretrainConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def fsync_tree(p: Path) -> None:
    for f in ([p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def main() -> int:
    cfg, args = parse_args(PretrainConfig, __doc__, extra=lambda p: p.add_argument("--reps", type=int, default=5))
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(_free_port())}.items():
        os.environ.setdefault(k, v)
    from megaspeech.parallel.state import destroy_distributed, init_distributed
    from megaspeech.checkpoint import engine as ckpt
    from megaspeech.checkpoint import offline
    from megaspeech.train.task_spec import LMTask
    from megaspeech.train.trainer import Trainer

    work = Path(tempfile.mkdtemp(prefix="ckpt_io_"))
    cfg.run.dir, cfg.run.resume, cfg.train.progress_bar = str(work / "run"), "none", False
    cfg.metrics.wandb, cfg.metrics.tensorboard = "disabled", False
    cfg.checkpoint.keep = args.reps + 1  # no pruning inside the timed saves
    layout = init_distributed(cfg.parallel.tensor, cfg.parallel.pipeline)
    tr = Trainer(cfg, layout, LMTask(cfg, layout))
    tr.train_step(tr._next_micro_batches())  # populate the Adam moments
    tr.step = 1
    n_params = sum(p.numel() for p in tr.engine.module.parameters())

    state = {"module": tr.engine.module.state_dict(), "optimizer": tr.engine.optimizer.state_dict()}
    from deepspeed.runtime.fp16.loss_scaler import LossScaler  # the ZeRO optimizer state holds these
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    # Interleaved (ours, torch, ours, torch, ...) so load changes on the shared machine hit both sides;
    # every save is a new step / new file and is fsynced, so both sides measure bytes on disk.
    t = {"save": [], "load": [], "tsave": [], "tload": []}
    for i in range(args.reps):
        tr.step += 1

        def save():
            tr.save()
            fsync_tree(tr.ckpt_root / offline.tag_for(tr.step))
        t["save"].append(timed(save))
        plain = work / f"plain{i}.pt"

        def tsave():
            torch.save(state, plain)
            fsync_tree(plain)
        t["tsave"].append(timed(tsave))
        tag = offline.tag_for(tr.step)
        t["load"].append(timed(lambda: ckpt.load(tr.engine, tr.ckpt_root, tag, layout, work / "uni")))

        def tload():
            with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
                torch.load(plain, map_location="cpu", weights_only=True)
        t["tload"].append(timed(tload))
    ours_bytes, plain_bytes = dir_bytes(tr.ckpt_root / offline.tag_for(tr.step)), plain.stat().st_size
    t_save, t_load, t_tsave, t_tload = (statistics.median(t[k]) for k in ("save", "load", "tsave", "tload"))

    gb = 1e9
    print(f"params={n_params / 1e6:.1f}M  checkpoint={ours_bytes / gb:.3f} GB  torch.save file={plain_bytes / gb:.3f} GB")
    print(f"ours:  save {ours_bytes / t_save / gb:.2f} GB/s ({t_save:.3f} s)  load {ours_bytes / t_load / gb:.2f} GB/s ({t_load:.3f} s)")
    print(f"torch: save {plain_bytes / t_tsave / gb:.2f} GB/s ({t_tsave:.3f} s)  load {plain_bytes / t_tload / gb:.2f} GB/s ({t_tload:.3f} s)")
    save_ratio = (ours_bytes / t_save) / (plain_bytes / t_tsave)
    load_ratio = (ours_bytes / t_load) / (plain_bytes / t_tload)
    print(f"save_ratio={save_ratio:.3f}")
    print(f"load_ratio={load_ratio:.3f}")
    destroy_distributed()
    shutil.rmtree(work, ignore_errors=True)
    ratio = ((ours_bytes + ours_bytes) / (t_save + t_load)) / ((plain_bytes + plain_bytes) / (t_tsave + t_tload))
    print(f"ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
