"""Held-out documents for the benchmark tasks, and the contamination check.

The split: the last `heldout_docs` documents of a corpus (in megaspeech.data.corpora order; for sotu
the newest addresses, which the demo text and the speech corpus's training split do not read). The
check: every training dataset named in `training_manifests` is read and the `doc` (else `source`)
names of its samples (the document name every text/speech prep tool stores) are compared with the held-out
names; a shared document fails with ContaminationError naming both. The split (document names and
the manifests checked) is recorded in eval.json.
"""
from __future__ import annotations

import re
from pathlib import Path

from megaspeech.data.corpora import iter_corpus

_PLAIN = re.compile(r"^[A-Za-z][A-Za-z ,;:'\-]*[.?!]$")  # TTS and ASR agree on plain words only


class ContaminationError(ValueError):
    pass


def heldout_documents(corpus: str, n: int) -> list[tuple[str, str]]:
    """[(doc name, text)] of the last n documents of `corpus`."""
    docs = list(iter_corpus(corpus))
    if len(docs) < n:
        raise ValueError(f"heldout_docs={n} but corpus {corpus!r} has {len(docs)} documents; lower heldout_docs")
    return docs[-n:]


def training_sources(manifest_dir: str | Path) -> set[str]:
    """Document names (`source` field) of every sample of a dataset dir."""
    from megaspeech.data.shards import Dataset
    names = set()
    for _, s in Dataset(manifest_dir):
        src = s.get("doc", s.get("source"))
        if src is not None:
            names.add(str(src))
    return names


def check_not_in_training(doc_names: list[str], manifests: list[str]) -> None:
    """Fail if any held-out document occurs in a training dataset (ContaminationError names both)."""
    for m in manifests:
        shared = sorted(set(doc_names) & training_sources(m))
        if shared:
            raise ContaminationError(
                f"held-out document {shared[0]!r} ({len(shared)} in all) is in the training dataset {m} "
                f"(its samples' `source` field); evaluate on documents the model was not trained on: lower "
                f"heldout_docs or rebuild the training data without them")


def split_sentences(text: str) -> list[str]:
    """Every sentence of a document, in order."""
    return [s.strip() for s in re.split(r"(?<=[.?!])\s+(?=[A-Z])", re.sub(r"\s+", " ", text)) if s.strip()]


def plain(s: str, min_words: int = 5, max_words: int = 22) -> bool:
    """A sentence TTS can read and ASR can score: plain words and punctuation, 5-22 words."""
    return bool(_PLAIN.match(s)) and min_words <= len(s.split()) <= max_words and not s.isupper()
