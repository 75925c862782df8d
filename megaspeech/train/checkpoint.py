"""Atomic, resumable DeepSpeed checkpoints.

Layout: RUN_DIR/checkpoints/<tag>/ holds DeepSpeed's sharded files (model per TP/PP rank, ZeRO
optimizer partitions per DP rank) plus `rank{r}.pt` per rank: RNG states and, per data-parallel
rank, the data-loader position. `latest` names the newest complete checkpoint.

Save protocol (a crash at any moment leaves `latest` loadable):
  every rank writes into `<tag>.tmp`  ->  barrier  ->  rank 0 renames `<tag>.tmp` to `<tag>`,
  then atomically replaces `latest`, then prunes to the newest `keep`  ->  barrier.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def read_latest(root: Path) -> str | None:
    f = root / "latest"
    if not f.is_file():
        return None
    tag = f.read_text().strip()
    if not (root / tag).is_dir():
        raise FileNotFoundError(f"{f} names {tag!r}, which does not exist under {root}; "
                                f"point {f} at an existing checkpoint directory or delete it to start fresh")
    return tag


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def rng_state() -> dict:
    _, mt, pos, _, _ = np.random.get_state()
    # Plain tensors / ints only, so the file loads with torch.load(weights_only=True).
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(mt.astype(np.int64)), "numpy_pos": int(pos),
            "python": list(random.getstate()[1]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", s["numpy"].numpy().astype(np.uint32), s["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(x) for x in s["python"]), None))
    if s["cuda"]:
        torch.cuda.set_rng_state_all(s["cuda"])


def save(engine, root: Path, step: int, client_state: dict, rank_state: dict, keep: int,
         crash_after_write: bool = False) -> str:
    """Save a checkpoint of `step` collectively; returns its tag. `crash_after_write` is a test hook
    (env MEGASPEECH_CRASH_IN_SAVE) that kills rank 1 after its shards are written, before the rename."""
    rank = dist.get_rank()
    tag, tmp = tag_for(step), tag_for(step) + ".tmp"
    if rank == 0:
        shutil.rmtree(root / tmp, ignore_errors=True)  # leftovers of a crashed save
        root.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    engine.save_checkpoint(str(root), tag=tmp, client_state=client_state, save_latest=False)
    torch.save(rank_state, root / tmp / f"rank{rank}.pt")
    if crash_after_write and rank == dist.get_world_size() - 1:
        os._exit(9)
    dist.barrier()
    if rank == 0:
        shutil.rmtree(root / tag, ignore_errors=True)
        os.replace(root / tmp, root / tag)
        _write_atomic(root / "latest", tag)
        done = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("step")
                      and not p.name.endswith(".tmp"))
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(root / old, ignore_errors=True)
    dist.barrier()
    log.info("saved checkpoint %s", root / tag)
    return tag


def load(engine, root: Path, tag: str) -> tuple[dict, dict]:
    """Load model/optimizer/LR schedule into `engine`; returns (client_state, this rank's state)."""
    path, client_state = engine.load_checkpoint(str(root), tag=tag, load_module_strict=True)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint {root / tag}")
    rank_file = root / tag / f"rank{dist.get_rank()}.pt"
    if not rank_file.is_file():
        raise FileNotFoundError(f"{rank_file} is missing: the checkpoint was written by a different world size; "
                                f"resume with the same layout or convert it to a universal checkpoint")
    return client_state, torch.load(rank_file, weights_only=True)
