"""Reading checkpoints outside a training job: `latest`, meta.json, verification, each DP rank's data
position, and the full (un-sliced) weights of a checkpoint of any TP/PP layout, as a model."""
from __future__ import annotations

import glob
import hashlib
import logging
import re
from pathlib import Path

import torch
import torch.distributed as dist

from megaspeech.checkpoint.integrity import META, CheckpointError, list_files, no_unpickling, read_json, verify
from megaspeech.checkpoint.tp_rules import merge_tp
from megaspeech.config.load import build
from megaspeech.config.schema import ModelConfig
from megaspeech.model.llm import DecoderLM
from megaspeech.parallel.layers import TorchLayers
from megaspeech.vocab import Vocab

log = logging.getLogger(__name__)


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def read_latest(root: Path) -> str | None:
    f = root / "latest"
    if not f.is_file():
        return None
    raw = f.read_bytes().strip()
    tag = raw.decode("ascii", errors="replace")
    if not re.fullmatch(r"step\d+", tag):
        raise CheckpointError(f"{f} does not hold a checkpoint name (step<N>) but {raw[:40]!r}: it is damaged; "
                              f"delete it (resume then takes the newest checkpoint that verifies)")
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
        if not root.is_dir():
            continue
        try:
            tag = read_latest(root)
        except (FileNotFoundError, OSError, CheckpointError):  # like run.resume=auto: newest that verifies
            tag = find_resumable(root)  # names the damaged `latest` in its warning
        if tag is not None:
            return root / tag
    raise FileNotFoundError(f"{p}: no meta.json there and no `latest` in {p} or {p / 'checkpoints'}; "
                            f"pass a step directory written by launch/pretrain.py")


def step_dirs(root: Path) -> list[str]:
    """Complete checkpoint tags under `root` (step directories, no `.tmp`), newest first."""
    if not Path(root).is_dir():
        return []
    return sorted((p.name for p in Path(root).iterdir() if p.is_dir() and re.fullmatch(r"step\d+", p.name)),
                  reverse=True)


def read_latest_quiet(root: Path) -> str | None:
    try:
        return read_latest(root)
    except (FileNotFoundError, OSError, CheckpointError):
        return None


def read_meta(ckpt_dir: Path) -> dict:
    f = Path(ckpt_dir) / META
    if not f.is_file():
        raise FileNotFoundError(f"{f} is missing: {ckpt_dir} is not a complete megaspeech checkpoint "
                                f"(an interrupted save leaves <tag>.tmp); pick a directory named in `latest`")
    return read_json(f, "checkpoint manifest")


def verify_collective(step_dir: Path) -> list[str]:
    """Problems with `step_dir` (meta.json unreadable, its `files` table missing, empty or not listing
    every file on disk, or files that differ from its checksums), the same list on every rank; each rank
    hashes a share of the files. Outside a process group: all. A table that cannot vouch for every file
    is a failure like a bad checksum (before, a missing table loaded unverified with a warning)."""
    try:
        meta = read_meta(step_dir)
        files = meta.get("files")
        problems = unlisted(step_dir, files)
    except (OSError, CheckpointError) as e:
        problems, files = [str(e)], None
    if not dist.is_available() or not dist.is_initialized():
        return problems or verify(step_dir, files)
    if not problems:
        problems = verify(step_dir, files, (dist.get_rank(), dist.get_world_size()))
    return agree(problems)


def unlisted(step_dir: Path, files) -> list[str]:
    """A `files` table that cannot vouch for the checkpoint: missing, empty, or not listing every file
    on disk (each unchecked file could hold anything). [] when it lists them all."""
    where = Path(step_dir) / META
    if not isinstance(files, dict) or not files:
        what = "no `files` table" if files is None else "an empty `files` table" if not files else "a damaged `files` table"
        return [f"{where} has {what}: nothing in {step_dir} can be verified (a save that never finished its "
                f"checksums, or an edited meta.json); resume from another checkpoint"]
    extra = [n for n in list_files(step_dir) if n not in files]
    if extra:
        return [f"{where} does not list {len(extra)} file(s) on disk, which cannot be verified: "
                f"{', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}; resume from another checkpoint"]
    return []


def agree(errors: list[str]) -> list[str]:
    """Every rank's errors, on every rank (a collective: also the barrier between save phases)."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, list(errors))
    return [e for errs in out for e in errs]


def find_resumable(root: Path) -> str | None:
    """The checkpoint `run.resume=auto` continues from: `latest` if it verifies, else the newest step
    directory that verifies (each one skipped is logged with the reason). None when `root` holds no
    checkpoint; CheckpointError when it holds some but none verifies."""
    tags = step_dirs(root)
    first = None
    try:
        first = read_latest(root)
    except (FileNotFoundError, OSError, CheckpointError) as e:
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


def data_states(step_dir: Path, saved_layout: dict) -> list[dict]:
    """The data-loader state of every data-parallel rank of a checkpoint, in DP order (saved ranks are
    numbered TP fastest, then DP: DP index d's first rank is d * tp)."""
    files = [step_dir / f"rank{d * saved_layout['tp']}.pt" for d in range(saved_layout["dp"])]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {step_dir} lacks {missing}; it is incomplete, resume from another tag")
    with no_unpickling():
        return [torch.load(f)["data"] for f in files]


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
        out[name] = merge_tp(name, [sd[name] for sd in per_tp])
    return out, meta


def load_decoder(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[DecoderLM, Vocab, str]:
    """Checkpoint of any TP/PP layout -> (DecoderLM at TP=1 in eval mode, its Vocab, version string).
    version = <tag>@<sha256 of meta.json, 12 hex> (meta.json holds step, config and layout)."""
    ckpt = resolve(path)
    sd, meta = full_state_dict(ckpt)
    mcfg = build(ModelConfig, meta["config"]["model"], "model")
    vocab = Vocab(**meta["vocab"])
    rows = sd["0.embed.weight"].shape[0]
    model = DecoderLM(mcfg, TorchLayers(), rows, seed=0)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (mcfg.tie_embeddings and k.endswith("out.weight"))]
    if missing or unexpected:
        raise ValueError(f"{ckpt}: state dict does not match the model (missing {missing[:4]}, unexpected {unexpected[:4]})")
    digest = hashlib.sha256((ckpt / "meta.json").read_bytes()).hexdigest()[:12]
    return model.to(dtype).eval(), vocab, f"{ckpt.name}@{digest}"
