"""What makes a checkpoint trustworthy: checksums of every file, loads that never unpickle code, and
saves that fail cleanly (no partial directory, a message naming the directory and the space needed).

Checksums. meta.json holds `files: {relative path: {bytes, sha256}}` for every other file of the
step directory. Ranks hash disjoint shares of the files in parallel (the slow part of a large
checkpoint), rank 0 writes meta.json last; `verify` re-hashes and names every file that is missing,
of another size or of other bytes.

No unpickling. DeepSpeed loads its files with `torch.load(weights_only=False)` (its checkpoint engine
and deepspeed/checkpoint/*: the universal converter), so a crafted file runs code. Inside
`no_unpickling()` every `torch.load` is forced to `weights_only=True` (module attribute replaced, and
torch's TORCH_FORCE_WEIGHTS_ONLY_LOAD for direct callers) with an allow-list of the few DeepSpeed
classes its optimizer files hold; anything else is refused with an error naming the file.

Failed writes. `GuardedCheckpointEngine` (DeepSpeed's torch engine, installed by `guard_engine`)
records a failed `torch.save` (an OSError: ENOSPC, EIO, ...; or torch's zip-writer RuntimeError, which is
what a full disk raises in most trials: `write_failure`) and removes the partial file instead of raising
inside DeepSpeed's save, whose barriers every rank must still reach; `save` then agrees on the
failure collectively and removes the whole `<tag>.tmp`.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import torch

META = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted or written; the message names the file/dir and the fix."""


class UnsafeCheckpointError(CheckpointError):
    pass


# ---- checksums -------------------------------------------------------------------------------
def file_digest(path: Path) -> dict:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(16 << 20):
            h.update(chunk)
            n += len(chunk)
    return {"bytes": n, "sha256": h.hexdigest()}


def list_files(step_dir: Path) -> list[str]:
    """Every regular file under `step_dir` except meta.json, as sorted relative paths."""
    step_dir = Path(step_dir)
    return sorted(str(p.relative_to(step_dir)) for p in step_dir.rglob("*")
                  if p.is_file() and str(p.relative_to(step_dir)) != META)


def digests(step_dir: Path, names: list[str]) -> dict[str, dict]:
    return {n: file_digest(Path(step_dir) / n) for n in names}


def verify(step_dir: Path, files: dict[str, dict], share: tuple[int, int] = (0, 1)) -> list[str]:
    """Problems (one line each, naming the file) among the files of `share` = (rank, world)."""
    step_dir = Path(step_dir)
    rank, world = share
    problems = []
    for name in sorted(files)[rank::world]:
        want, f = files[name], step_dir / name
        if not f.is_file():
            problems.append(f"{f} is missing")
            continue
        size = f.stat().st_size
        if size != want["bytes"]:
            problems.append(f"{f} has {size} bytes, meta.json records {want['bytes']} (truncated or replaced)")
            continue
        if file_digest(f)["sha256"] != want["sha256"]:
            problems.append(f"{f}: sha256 differs from meta.json (the bytes changed since the save: corrupt)")
    return problems


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file())


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def read_json(path: Path, what: str) -> dict:
    """JSON file -> dict, failing with the file named (not a bare JSONDecodeError)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the {what} is damaged: restore it or pick "
                              f"another checkpoint") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}; the {what} is damaged")
    return data


# ---- no unpickling ---------------------------------------------------------------------------
def _allowed_globals() -> list:
    """The non-tensor classes DeepSpeed's own checkpoint files hold (found with
    torch.serialization.get_unsafe_globals_in_checkpoint on ZeRO 0-3 / fp32 / bf16 saves)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


_depth = [0]  # nesting: only the outermost block installs and removes (torch's safe_globals is not reentrant)


@contextlib.contextmanager
def no_unpickling():
    """Every torch.load inside the block reads tensors and allow-listed classes only. Reentrant."""
    if _depth[0]:
        _depth[0] += 1
        try:
            yield
        finally:
            _depth[0] -= 1
        return
    original = torch.load

    def safe_load(f, map_location=None, pickle_module=None, *, weights_only=None, **kw):
        try:
            return original(f, map_location=map_location, weights_only=True, **kw)
        except pickle.UnpicklingError as e:
            why = next((ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln), str(e).splitlines()[0])
            raise UnsafeCheckpointError(
                f"{f}: refused to load: it needs code beyond tensors and DeepSpeed's known classes to unpickle "
                f"({why}). megaspeech never runs code from checkpoint files; this file is not one megaspeech/"
                f"DeepSpeed wrote (tampered or foreign): delete it and resume from another checkpoint") from None

    old_env = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    torch.load = safe_load
    _depth[0] = 1
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            yield
    finally:
        _depth[0] = 0
        torch.load = original
        if old_env is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old_env


# ---- failed writes ---------------------------------------------------------------------------
def _guarded_engine_class():
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class GuardedCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch engine; a failed write is recorded in `errors` and its partial file removed."""

        errors: list

        def save(self, state_dict, path: str):
            try:
                super().save(state_dict, path)
            except Exception as e:
                why = write_failure(e, path)
                if why is None:
                    raise
                self.errors.append(why)
                with contextlib.suppress(OSError):
                    os.unlink(path)

        def load(self, path: str, map_location=None):
            with no_unpickling():
                return torch.load(path, map_location=map_location)

    return GuardedCheckpointEngine


def guard_engine(engine) -> list:
    """Install the guarded engine in place of DeepSpeed's plain torch engine (other engines, e.g.
    decoupled ones a user configured, are kept); returns its (cleared) error list."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    cls = _guarded_engine_class()
    ce = engine.checkpoint_engine
    if type(ce) is TorchCheckpointEngine:
        guarded = cls.__new__(cls)
        guarded.__dict__.update(ce.__dict__)
        engine.checkpoint_engine = ce = guarded
    if not hasattr(ce, "errors"):
        ce.errors = []
    ce.errors.clear()
    return ce.errors


def save_file(obj, path: Path, errors: list) -> None:
    """torch.save that records an OSError in `errors` (partial file removed) instead of raising."""
    try:
        torch.save(obj, path)
    except Exception as e:
        why = write_failure(e, path)
        if why is None:
            raise
        errors.append(why)
        with contextlib.suppress(OSError):
            os.unlink(path)


# torch's zip writer (caffe2/serialize/inline_container.cc) reports a failed or short write as a
# RuntimeError, e.g. "[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 58", or
# "PytorchStreamWriter failed writing file ...": on a full disk that is what torch.save raises.
_ZIP_WRITE = ("inline_container.cc", "PytorchStreamWriter", "unexpected pos", "file write failed")


def write_failure(e: BaseException, path) -> str | None:
    """One line for an exception of a checkpoint write that means the write failed (an OSError, or
    torch's zip-writer RuntimeError, anywhere in the exception chain), naming `path` and, when the
    disk is full (ENOSPC / EDQUOT, or no free space left), saying so; None for any other exception."""
    chain, seen = [], e
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    oserr = next((x for x in chain if isinstance(x, OSError)), None)
    zip_err = next((x for x in chain if isinstance(x, RuntimeError) and any(k in str(x) for k in _ZIP_WRITE)), None)
    if oserr is None and zip_err is None:
        return None
    full = oserr is not None and oserr.errno in (errno.ENOSPC, errno.EDQUOT)
    with contextlib.suppress(OSError):
        full = full or shutil.disk_usage(Path(path).parent).free < (1 << 20)
    if oserr is not None:
        detail = f"{oserr.strerror or oserr}"
    else:
        detail = f"the write stopped short (torch: {str(zip_err).strip().splitlines()[0][:160]})"
    return f"writing {path}: {detail}" + (" (No space left on device: the disk is full)" if full and "No space" not in detail
                                          else "")


def space_message(root: Path, needed: int, basis: str) -> str:
    free = shutil.disk_usage(root).free if root.exists() else 0
    return (f"{root} has {human(free)} free; a checkpoint of this run needs about {human(needed)} ({basis}). "
            f"Free space there (or set run.dir on a larger disk, or lower checkpoint.keep) and resume")
