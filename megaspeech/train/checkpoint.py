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

Loading: the files are checked against meta.json first (ckpt_integrity.verify); `run.resume=auto`
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

from megaspeech.fs import write_atomic
from megaspeech.train.ckpt_integrity import (META, CheckpointError, digests, dir_bytes, guard_engine, list_files,
                                             no_unpickling, read_json, save_file, space_message, verify)

log = logging.getLogger(__name__)

# How a tensor-parallel slice relates to the full parameter (regexes on global parameter names such
# as `3.attn.proj.weight`, the same at every layout). Declared to DeepSpeed's universal-checkpoint
# converter the way Megatron-DeepSpeed does, and used by `full_state_dict` for export. Everything
# not listed is column-parallel: slices concatenate on dim 0 (the fused QKV is laid out per KV group,
# so its dim-0 slices are whole groups and concatenate back in order).
BRIDGE_REPLICATED = r"^(encoder|bridge)\."  # task: bridge keeps these whole on every TP rank
TP_REPLICATED = [r".*norm\.weight$", BRIDGE_REPLICATED]
TP_ROW_PARALLEL = [r".*attn\.proj\.weight$", r".*mlp\.down\.weight$"]
TP_VOCAB = [r".*embed\.weight$", r".*out\.weight$"]


def universal_checkpoint_info(padded_vocab: int, bridge: bool = False) -> dict:
    """The `universal_checkpoint_info` client state `ds_to_universal` needs. The padded vocab is the
    same at every layout (cfg.padded_vocab_size()), so nothing is stripped or re-padded. The converter
    refuses a pattern that matches no parameter, so the bridge's pattern is declared for its task only."""
    replicated = [p for p in TP_REPLICATED if bridge or p != BRIDGE_REPLICATED]
    return {"universal_checkpoint_version": 0.2,
            "tp_replicated_parameter_patterns": replicated,
            "parameter_with_row_parallelism_patterns": TP_ROW_PARALLEL,
            "vocabulary_parameter_patterns": TP_VOCAB,
            "original_vocab_size": padded_vocab, "padded_vocab_size": padded_vocab}


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


def resolve(path: str | Path) -> Path:
    """A step directory (holding meta.json), or the `latest` of a checkpoints dir or of a run dir."""
    p = Path(path).expanduser()
    if (p / "meta.json").is_file():
        return p
    for root in (p, p / "checkpoints"):
        tag = read_latest(root) if root.is_dir() else None
        if tag is not None:
            return root / tag
    raise FileNotFoundError(f"{p}: no meta.json there and no `latest` in {p} or {p / 'checkpoints'}; "
                            f"pass a step directory written by launch/pretrain.py")


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


# ---- save / load -----------------------------------------------------------------------------
def step_dirs(root: Path) -> list[str]:
    """Complete checkpoint tags under `root` (step directories, no `.tmp`), newest first."""
    if not Path(root).is_dir():
        return []
    return sorted((p.name for p in Path(root).iterdir() if p.is_dir() and re.fullmatch(r"step\d+", p.name)),
                  reverse=True)


def _needed_bytes(engine, root: Path) -> tuple[int, str]:
    """Space a new checkpoint needs: the size of the newest one, else 16 B per parameter (fp32 weights,
    master copy and two Adam moments) times the model-parallel ranks."""
    done = step_dirs(root)
    if done:
        return dir_bytes(root / done[0]), f"the size of {done[0]}"
    n = sum(p.numel() for p in engine.module.parameters())
    mp = dist.get_world_size() // max(1, getattr(engine, "dp_world_size", 1))
    return 16 * n * mp, "estimated as 16 bytes per parameter"


def _agree(errors: list[str]) -> list[str]:
    """Every rank's errors, on every rank (a collective: also the barrier between save phases)."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, list(errors))
    return [e for errs in out for e in errs]


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
        root.mkdir(parents=True, exist_ok=True)
        for old in root.glob("step*.tmp"):  # leftovers of crashed saves (one save runs at a time)
            shutil.rmtree(old, ignore_errors=True)
        if shutil.disk_usage(root).free < needed[0]:
            pre.append("not enough free space before writing")
    pre = _agree(pre)
    if pre:
        raise CheckpointError(f"not saving checkpoint {tag} in {root}: {space_message(root, *needed)}")
    errors = guard_engine(engine)
    with _saving(engine.module):
        engine.save_checkpoint(str(root), tag=tmp, client_state=client_state, save_latest=False)
    save_file(rank_state, root / tmp / f"rank{rank}.pt", errors)
    if crash_after_write and rank == world - 1:
        os._exit(9)
    errors = _agree(errors)
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
    final = _agree(final)
    if final:
        prev = read_latest_quiet(root)
        raise CheckpointError(
            f"saving checkpoint {tag} in {root} failed: {final[0]}"
            f"{f' (and {len(final) - 1} more)' if len(final) > 1 else ''}. {space_message(root, *needed)}. "
            f"The partial {root / tmp} was removed; `latest` still names {prev or 'nothing'}")
    log.info("saved checkpoint %s", root / tag)
    return tag


def read_latest_quiet(root: Path) -> str | None:
    try:
        return read_latest(root)
    except (FileNotFoundError, OSError):
        return None


def read_meta(ckpt_dir: Path) -> dict:
    f = Path(ckpt_dir) / META
    if not f.is_file():
        raise FileNotFoundError(f"{f} is missing: {ckpt_dir} is not a complete megaspeech checkpoint "
                                f"(an interrupted save leaves <tag>.tmp); pick a directory named in `latest`")
    return read_json(f, "checkpoint manifest")


def verify_collective(step_dir: Path) -> list[str]:
    """Problems with `step_dir` (meta.json unreadable, or files that differ from its checksums), the
    same list on every rank; each rank hashes a share of the files. Outside a process group: all."""
    try:
        meta = read_meta(step_dir)
        files = meta.get("files")
        problems = [] if isinstance(files, dict) else None
    except (OSError, CheckpointError) as e:
        problems, files = [str(e)], None
    if problems is None:  # written before checksums existed: accepted as it is, with a warning
        log.warning("%s has no checksums (saved by an older megaspeech): loading it unverified", step_dir)
        problems = []
    if not dist.is_available() or not dist.is_initialized():
        return problems or (verify(step_dir, files) if files else [])
    if files and not problems:
        problems = verify(step_dir, files, (dist.get_rank(), dist.get_world_size()))
    return _agree(problems) if files else problems


def find_resumable(root: Path) -> str | None:
    """The checkpoint `run.resume=auto` continues from: `latest` if it verifies, else the newest step
    directory that verifies (each one skipped is logged with the reason). None when `root` holds no
    checkpoint; CheckpointError when it holds some but none verifies."""
    tags = step_dirs(root)
    first = None
    try:
        first = read_latest(root)
    except (FileNotFoundError, OSError) as e:
        log.warning("%s; looking for the newest checkpoint that verifies", e)
    if first is None and tags and not (root / "latest").is_file():
        log.warning("%s has checkpoints but no `latest`: looking for the newest one that verifies", root)
    order = ([first] if first else []) + [t for t in tags if t != first]
    skipped = []
    for tag in order:
        problems = verify_collective(root / tag)
        if not problems:
            if skipped:
                log.warning("resuming from %s; skipped %d checkpoint(s) that do not verify: %s", root / tag,
                            len(skipped), "; ".join(f"{t}: {p}" for t, p in skipped))
            return tag
        skipped.append((tag, problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")))
        log.warning("skipping checkpoint %s: %s", root / tag, skipped[-1][1])
    if skipped:
        raise CheckpointError(f"none of the {len(skipped)} checkpoints in {root} verifies: "
                              + "; ".join(f"{t}: {p}" for t, p in skipped)
                              + f". Restore a good copy, or move {root} away to start from step 0")
    return None


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


def data_states(step_dir: Path, saved_layout: dict) -> list[dict]:
    """The data-loader state of every data-parallel rank of a checkpoint, in DP order (saved ranks are
    numbered TP fastest, then DP: DP index d's first rank is d * tp)."""
    files = [step_dir / f"rank{d * saved_layout['tp']}.pt" for d in range(saved_layout["dp"])]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {step_dir} lacks {missing}; it is incomplete, resume from another tag")
    with no_unpickling():
        return [torch.load(f)["data"] for f in files]


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


# ---- offline: the full model from a checkpoint of any layout ---------------------------------
def _merge_tp(name: str, slices: list[torch.Tensor]) -> torch.Tensor:
    if len(slices) == 1 or any(re.match(p, name) for p in TP_REPLICATED):
        return slices[0]
    return torch.cat(slices, dim=1 if any(re.match(p, name) for p in TP_ROW_PARALLEL) else 0)


def full_state_dict(ckpt_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The full (un-sliced) model weights of a checkpoint of any TP/PP layout, keyed by global names
    (`0.embed.weight`, `1.attn.qkv.weight`, ...), and its meta.json. Reads only tensors
    (weights_only=True) after checking every file against meta.json; ZeRO-3 checkpoints (weights partitioned over DP) are refused."""
    ckpt_dir = Path(ckpt_dir)
    meta = read_meta(ckpt_dir)
    problems = verify_collective(ckpt_dir)
    if problems:
        raise CheckpointError(f"{ckpt_dir} does not verify against its meta.json: {'; '.join(problems)}; "
                              f"export another checkpoint (e.g. the step directory before it)")
    tp = meta["layout"]["tp"]
    zero = meta.get("config", {}).get("parallel", {}).get("zero_stage")
    per_tp: list[dict[str, torch.Tensor]] = [{} for _ in range(tp)]
    with no_unpickling():
        if meta["layout"]["pp"] == 1:
            for r in range(tp):
                f = ckpt_dir / f"mp_rank_{r:02d}_model_states.pt"
                if not f.is_file():
                    hint = ("ZeRO-3 checkpoints partition the weights and are not supported here: save with "
                            "parallel.zero_stage<=2" if zero == 3 else
                            f"this ZeRO-{zero} checkpoint is incomplete: export another step directory")
                    raise FileNotFoundError(f"{f} is missing ({hint})")
                per_tp[r] = torch.load(f, map_location="cpu")["module"]
        else:  # pipeline: layer_<global idx>-model_<tp rank>-model_states.pt, keys local to the layer
            files = sorted(glob.glob(str(ckpt_dir / "layer_*-model_states.pt")))
            if not files:
                raise FileNotFoundError(f"no layer_*-model_states.pt files in {ckpt_dir}")
            for f in files:
                m = re.match(r"layer_(\d+)-model_(\d+)-model_states\.pt$", Path(f).name)
                if m is None:
                    raise ValueError(f"unexpected pipeline checkpoint file name {f}")
                sd = torch.load(f, map_location="cpu")
                per_tp[int(m.group(2))].update({f"{int(m.group(1))}.{k}": v for k, v in sd.items()})
    out = {}
    for name in per_tp[0]:
        if name.endswith("_extra_state"):
            continue
        out[name] = _merge_tp(name, [sd[name] for sd in per_tp])
    return out, meta
