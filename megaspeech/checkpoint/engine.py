"""Atomic, resumable, reshardable DeepSpeed checkpoints.

Layout: RUN_DIR/checkpoints/<tag>/ holds DeepSpeed's sharded files (model per TP/PP rank, ZeRO
optimizer partitions per DP rank), `rank{r}.pt` per rank (RNG states and, per data-parallel rank,
the data-loader position) and `meta.json` (layout, model config, vocabulary: readable without
unpickling anything). `latest` names the newest complete checkpoint.

Save protocol (a crash at any moment leaves `latest` loadable):
  every rank writes into `<tag>.tmp`  ->  ranks hash shares of its files  ->  rank 0 writes meta.json
  (size + sha256 of every file) last, renames `<tag>.tmp` to `<tag>`, atomically replaces `latest`,
  then prunes to the newest `keep` (never the one just written nor a newer one)  ->  barrier.
A failed write (disk full) on any rank removes `<tag>.tmp` and raises on every rank.

Loading: the files are checked against meta.json first (integrity.verify); `run.resume=auto`
falls back to the newest checkpoint that verifies. Every torch.load, DeepSpeed's included, runs under
`no_unpickling()` (weights_only=True with an allow-list): no code runs from a checkpoint file.

Resharding: a checkpoint whose TP/PP/DP differs from the running job is converted once (rank 0,
DeepSpeed's `ds_to_universal`) into RUN_DIR/checkpoints_universal/<tag> and loaded as a universal
checkpoint: every parameter's fp32 master and Adam moments are merged by the TP rules below and
re-sliced for the new layout, so training continues with the optimizer state kept.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import glob
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from megaspeech.checkpoint.offline import agree, read_latest_quiet, read_meta, step_dirs, tag_for
from megaspeech.fs import write_atomic
from megaspeech.checkpoint.integrity import (META, CheckpointError, digests, dir_bytes, guard_engine, list_files,
                                             no_unpickling, read_json, save_file, space_message, verify)

log = logging.getLogger(__name__)


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
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# ---- megatron-core `_extra_state` ------------------------------------------------------------
# megatron's linear layers add `<name>._extra_state: None` to every state dict. ds_to_universal
# crashes on those (it calls .float() on every module entry), so they are dropped while saving and
# put back (as None, which megatron ignores) before a strict load. The methods themselves stay:
# removing them breaks loading checkpoints that do hold the entries.
def _drop_extra_state(module, state_dict, prefix, local_metadata) -> None:
    if getattr(module, "_ms_saving", False) and state_dict.get(prefix + "_extra_state", 0) is None:
        del state_dict[prefix + "_extra_state"]


def _restore_extra_state(module, state_dict, prefix, *args) -> None:
    state_dict.setdefault(prefix + "_extra_state", None)


def _hooked(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).get_extra_state is not nn.Module.get_extra_state]


def install_extra_state_hooks(model: nn.Module) -> None:
    """Idempotent; hooks every module that overrides get_extra_state (megatron-core TP layers)."""
    for m in _hooked(model):
        if not getattr(m, "_ms_hooked", False):
            m.register_state_dict_post_hook(_drop_extra_state)
            m.register_load_state_dict_pre_hook(_restore_extra_state)
            m._ms_hooked = True


@contextlib.contextmanager
def _saving(model: nn.Module):
    """The drop applies inside this block only: other state_dict() callers see megatron's entries."""
    install_extra_state_hooks(model)
    mods = _hooked(model)
    for m in mods:
        m._ms_saving = True
    try:
        yield
    finally:
        for m in mods:
            m._ms_saving = False


def _needed_bytes(engine, root: Path) -> tuple[int, str]:
    """Space a new checkpoint needs: the size of the newest one, else 16 B per parameter (fp32 weights,
    master copy and two Adam moments) times the model-parallel ranks."""
    done = step_dirs(root)
    if done:
        return dir_bytes(root / done[0]), f"the size of {done[0]}"
    n = sum(p.numel() for p in engine.module.parameters())
    mp = dist.get_world_size() // max(1, getattr(engine, "dp_world_size", 1))
    return 16 * n * mp, "estimated as 16 bytes per parameter"


def _prepare(root: Path, tmp: str, needed: int) -> list[str]:
    """Rank 0, before a save: remove leftovers of crashed saves (the caller owns the run directory:
    megaspeech/train/run_lock.py, so a `step*.tmp` here is a dead run's; one save runs at a time),
    check the free space, and create `<tag>.tmp` (so a directory we may not write is named now, not
    as DeepSpeed's "Parent directory ... does not exist"). ["space"] or [a message] on failure."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        for old in root.glob("step*.tmp"):
            shutil.rmtree(old, ignore_errors=True)
        if shutil.disk_usage(root).free < needed:
            return ["space"]
        (root / tmp).mkdir()
    except OSError as e:
        why = "permission denied" if isinstance(e, PermissionError) else \
            "read-only filesystem" if e.errno == errno.EROFS else e.strerror or str(e)
        return [f"cannot write into {root} ({why}: {e.filename or root}); make it writable by this user "
                f"(chmod/chown, or remount read-write), or set run.dir to a writable directory, and resume"]
    return []


def save(engine, root: Path, step: int, client_state: dict, rank_state: dict, keep: int,
         meta: dict | None = None, crash_after_write: bool = False) -> str:
    """Save a checkpoint of `step` collectively; returns its tag. `meta` (JSON-able: layout, config,
    vocab) is written by rank 0 as meta.json with the size and sha256 of every file, last.
    `crash_after_write` is a test hook (env MEGASPEECH_CRASH_IN_SAVE) that kills the last rank after
    its shards are written, before the rename. A failed write (disk full, I/O error) on any rank
    removes `<tag>.tmp` and raises CheckpointError on every rank naming the directory and the space
    needed; `latest` and the checkpoints before are untouched."""
    rank, world = dist.get_rank(), dist.get_world_size()
    tag, tmp = tag_for(step), tag_for(step) + ".tmp"
    needed = _needed_bytes(engine, root)
    pre = []
    if rank == 0:
        pre = _prepare(root, tmp, needed[0])
    pre = agree(pre)
    if pre:
        raise CheckpointError(f"not saving checkpoint {tag} in {root}: {pre[0]}" if pre[0] != "space" else
                              f"not saving checkpoint {tag} in {root}: {space_message(root, *needed)}")
    errors = guard_engine(engine)
    with _saving(engine.module):
        engine.save_checkpoint(str(root), tag=tmp, client_state=client_state, save_latest=False)
    save_file(rank_state, root / tmp / f"rank{rank}.pt", errors)
    if crash_after_write and rank == world - 1:
        os._exit(9)
    errors = agree(errors)
    names: list = [None]
    if not errors and rank == 0:
        names = [list_files(root / tmp)]
    if not errors:  # ranks hash disjoint shares in parallel; rank 0 gathers them into meta.json
        dist.broadcast_object_list(names, src=0)
        try:
            mine = digests(root / tmp, names[0][rank::world])
        except OSError as e:
            mine = {"error": f"hashing {root / tmp}: {e}"}
        shares = [None] * world
        dist.all_gather_object(shares, mine)
        errors = [s["error"] for s in shares if "error" in s]
    final = []
    if rank == 0:
        try:
            if errors:
                raise OSError(errors[0])
            files = {k: v for s in shares for k, v in s.items()}
            write_atomic(root / tmp / META, json.dumps({**(meta or {}), "files": files}, indent=1))
            if (root / tag).exists():  # the same step saved again (e.g. after a fallback resume)
                log.warning("replacing the earlier checkpoint %s of the same step", root / tag)
                shutil.rmtree(root / tag)
            os.replace(root / tmp, root / tag)
            write_atomic(root / "latest", tag)
        except OSError as e:
            final = [str(e)] if not errors else errors
            shutil.rmtree(root / tmp, ignore_errors=True)
        else:  # keep the newest `keep` up to this one; never the one just written nor newer ones
            older = [t for t in step_dirs(root) if t < tag]
            for old in older[keep - 1:] if keep > 0 else []:
                shutil.rmtree(root / old, ignore_errors=True)
    final = agree(final)
    if final:
        prev = read_latest_quiet(root)
        raise CheckpointError(
            f"saving checkpoint {tag} in {root} failed: {final[0]}"
            f"{f' (and {len(final) - 1} more)' if len(final) > 1 else ''}. {space_message(root, *needed)}. "
            f"The partial {root / tmp} was removed; `latest` still names {prev or 'nothing'}")
    log.info("saved checkpoint %s", root / tag)
    return tag


def same_layout(saved: dict, layout) -> bool:
    return all(saved[k] == getattr(layout, k) for k in ("tp", "pp", "dp"))


def convert_to_universal(src: Path, dst: Path) -> None:
    """DeepSpeed checkpoint dir `src` -> universal checkpoint dir `dst` (written atomically; reused
    if already there). Runs DeepSpeed's own converter in this process (single rank)."""
    source = str(Path(src).resolve())
    if (dst / "source").is_file() and (dst / "source").read_text() == source:
        return  # converted before (e.g. an earlier attempt of this job)
    from deepspeed.checkpoint import ds_to_universal
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    args = argparse.Namespace(input_folder=str(src), output_folder=str(tmp), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=False)
    with no_unpickling():  # the converter torch.loads every file with weights_only=False
        ds_to_universal.main(args)
    for f in ["meta.json", *(p.name for p in src.glob("rank*.pt"))]:
        shutil.copy2(src / f, tmp / f)
    (tmp / "source").write_text(source)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def load(engine, root: Path, tag: str, layout, universal_root: Path) -> tuple[dict, dict]:
    """Load model / optimizer / LR schedule into `engine` from root/tag; returns (client_state, this
    rank's state). A checkpoint of another TP/PP/DP layout is converted to a universal checkpoint
    under `universal_root` first (rank 0 converts, everyone waits) and loaded as one; the rank state
    then comes from the saved rank of the same data-parallel index where it exists (else DP rank 0)."""
    src = root / tag
    meta = read_meta(src)
    saved = meta["layout"]
    universal = not same_layout(saved, layout)
    if universal and meta["config"]["parallel"]["zero_stage"] == 0:
        raise ValueError(f"{src} was saved with parallel.zero_stage=0 at TP={saved['tp']} PP={saved['pp']} "
                         f"DP={saved['dp']}; resharding needs the ZeRO optimizer files: resume with that layout, "
                         f"or save with zero_stage>=1")
    if universal:
        dst = universal_root / tag
        failure = [None]
        if dist.get_rank() == 0:
            log.info("checkpoint %s has TP=%d PP=%d DP=%d, this run TP=%d PP=%d DP=%d: converting to a "
                     "universal checkpoint in %s", src, saved["tp"], saved["pp"], saved["dp"],
                     layout.tp, layout.pp, layout.dp, dst)
            try:
                convert_to_universal(src, dst)
            except Exception as e:  # every rank must learn of it, not wait forever
                failure = [f"{type(e).__name__}: {e}"]
        dist.broadcast_object_list(failure, src=0)
        if failure[0] is not None:
            raise RuntimeError(f"converting {src} to a universal checkpoint failed on rank 0: {failure[0]}")
        root, src = universal_root, dst
        engine._config.load_universal_checkpoint = True  # read by engine and ZeRO optimizer at load
    install_extra_state_hooks(engine.module)
    try:
        guard_engine(engine)
        with no_unpickling():  # DeepSpeed's engine and universal loader use weights_only=False
            path, client_state = engine.load_checkpoint(str(root), tag=tag, load_module_strict=True)
    finally:
        engine._config.load_universal_checkpoint = False
    if path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint {src}")
    if not universal:
        rank_file = src / f"rank{dist.get_rank()}.pt"
    else:  # saved ranks are numbered TP fastest, then DP, then PP: the first rank of each DP index
        dp_index = layout.dp_rank if layout.dp_rank < saved["dp"] else 0
        rank_file = src / f"rank{dp_index * saved['tp']}.pt"
    if not rank_file.is_file():
        raise FileNotFoundError(f"{rank_file} is missing: the checkpoint is incomplete; resume from another tag")
    with no_unpickling():
        return client_state, torch.load(rank_file)


