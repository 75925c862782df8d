"""The files of a Hugging Face export beyond the weights (megaspeech/checkpoint/hf_export.py):

- `checksums.json`: size + sha256 of every file, written last inside the export's temp dir (before the
  marker), verified by `verify_export` wherever an export is read (launch/evaluate.py, model.init_from_hf).
  A directory without the export marker (a downloaded model, e.g. GLM-4-9B) has no checksums and is
  accepted as it is; one with the marker but no checksums.json is refused (re-export it).
- the text tokenizer copied in (`sentencepiece.model`, or `text_tokenizer/` for a Hugging Face one), so
  the export's vocab.json names it relative to the export: the directory is self-contained.
- the temp dirs of exports that were killed (`OUT.tmpPID` holding TMP_MARKER, `OUT.oldPID` holding the
  export marker), removed by the next export once their writer's pid is dead.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from megaspeech.fs import pid_alive, write_atomic

log = logging.getLogger(__name__)

MARKER = ".megaspeech-export"  # written into every export: only such a directory is ever replaced
TMP_MARKER = ".megaspeech-export-tmp"  # written first into an export's temp dir: its writer's pid
CHECKSUMS = "checksums.json"
FORMAT = "megaspeech-export-checksums/1"
SP_NAME = "sentencepiece.model"
HF_TOK_DIR = "text_tokenizer"
_HF_TOK_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                 "vocab.json", "merges.txt", "added_tokens.json")


class ExportIntegrityError(ValueError):
    """A megaspeech export whose files do not match its checksums.json; the message names the file."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(d: Path) -> dict:
    """checksums.json in `d`: {relative path: {bytes, sha256}} of every file but itself and the markers."""
    files = {}
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d).as_posix()
        if p.is_file() and rel not in (CHECKSUMS, MARKER, TMP_MARKER):
            files[rel] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}
    obj = {"format": FORMAT, "files": files}
    write_atomic(d / CHECKSUMS, json.dumps(obj, indent=1))
    return obj


def verify_export(d: str | Path) -> bool:
    """Check a megaspeech export against its checksums.json (True); a plain Hugging Face directory (no
    export marker) is not checked (False). Raises ExportIntegrityError naming the first bad file."""
    d = Path(d).expanduser()
    if not (d / MARKER).is_file():
        return False
    fix = "re-run launch/export_hf.py for this checkpoint (or restore the directory from a copy)"
    try:
        files = json.loads((d / CHECKSUMS).read_text())["files"]
    except FileNotFoundError:
        raise ExportIntegrityError(f"{d / CHECKSUMS} missing: {d} is a megaspeech export ({MARKER}) without "
                                   f"its checksums; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ExportIntegrityError(f"{d / CHECKSUMS}: damaged ({e}); {fix}") from None
    for rel, want in files.items():
        p = d / rel
        if not p.is_file():
            raise ExportIntegrityError(f"{p}: listed in {d / CHECKSUMS} but missing; {fix}")
        if p.stat().st_size != want["bytes"]:
            raise ExportIntegrityError(f"{p}: {p.stat().st_size} bytes, {CHECKSUMS} says {want['bytes']} "
                                       f"(truncated or replaced); {fix}")
        if _sha256(p) != want["sha256"]:
            raise ExportIntegrityError(f"{p}: sha256 does not match {d / CHECKSUMS} (corrupt); {fix}")
    return True


def copy_text_tokenizer(vocab, tmp: Path):
    """Copy the text tokenizer into the export; returns the vocab with its path relative to the export
    (Vocab.load resolves it against the export's vocab.json). A relative sp_model is looked up in the
    working directory, then in the repository (the run's config paths are relative to it)."""
    import dataclasses
    if vocab.sp_model:
        src = _find(vocab.sp_model)
        if src is None:
            raise FileNotFoundError(f"vocab.sp_model={vocab.sp_model} not found (in the working directory or the "
                                    f"repository); run from the directory the config's paths are relative to")
        shutil.copyfile(src, tmp / SP_NAME)
        return dataclasses.replace(vocab, sp_model=SP_NAME)
    if vocab.hf_tokenizer:
        src = Path(vocab.hf_tokenizer).expanduser()
        if not src.is_dir():
            log.warning("vocab.hf_tokenizer=%s not found: the export's vocab.json keeps that path", src)
            return vocab
        (tmp / HF_TOK_DIR).mkdir()
        for name in _HF_TOK_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / HF_TOK_DIR / name)
        return dataclasses.replace(vocab, hf_tokenizer=HF_TOK_DIR)
    return vocab


def _find(path: str) -> Path | None:
    p = Path(path).expanduser()
    if p.is_file():
        return p
    repo = Path(__file__).resolve().parents[2] / path
    return repo if not p.is_absolute() and repo.is_file() else None


def remove_stale_exports(out: Path) -> list[Path]:
    """Remove `OUT.tmpPID` (holding TMP_MARKER) and `OUT.oldPID` (holding MARKER) beside `out` whose pid
    is dead on this host: the leftovers of a killed export. Nothing else is touched."""
    pat = re.compile(re.escape(out.name) + r"\.(tmp|old)(\d+)")
    gone = []
    if not out.parent.is_dir():
        return gone
    for p in sorted(out.parent.iterdir()):
        m = pat.fullmatch(p.name)
        if not m or p.is_symlink() or not p.is_dir() or int(m[2]) == os.getpid() or pid_alive(int(m[2])):
            continue
        if (p / MARKER).is_file() or (m[1] == "tmp" and (p / TMP_MARKER).is_file()):
            shutil.rmtree(p)
            gone.append(p)
            log.warning("removed %s: the temp dir of an export that was killed", p)
    return gone
