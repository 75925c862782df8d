"""Held-out documents for the benchmark tasks, and the contamination check by provenance.

The split: the last `heldout_docs` documents of a corpus (in megaspeech.data.corpora order; for sotu
the newest addresses, which the demo text and the speech corpus's training split do not read). Their
names are document ids (`sotu/<file id>`, ...), the scheme every shard's `doc` field uses
(megaspeech.data.shards). The check: every training dataset named in `training_manifests` (text, speech
pairs, unsupervised speech, interleaved, spoken QA, audio) is read through its manifest only, whose
shard entries list the distinct `doc` ids of their samples (`docs`, written by ShardWriter): no sample is
decoded, so the check costs one JSON read per dataset at any size. A shared id fails with
ContaminationError naming both; a manifest without `docs` (a dataset made before provenance) is an error
too, since it cannot be checked. The text n-gram check beside it: megaspeech.eval.ngram_overlap.
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


REBUILD = ("launch/prepare_data.py text (text), launch/make_speech_corpus.py or launch/ingest_audio.py (audio), "
           "then launch/tokenize_speech.py (speech), launch/make_interleaved.py (interleaved), "
           "launch/make_speech_qa.py (spoken QA)")


def training_sources(manifest_dir: str | Path) -> set[str]:
    """The doc ids of every sample of a dataset dir, from its manifest's per-shard `docs` lists."""
    from megaspeech.data.shards import Dataset
    ds = Dataset(manifest_dir)
    bare = [s["name"] for s in ds.shards if s["samples"] and not s.get("docs")]
    if bare:
        raise ContaminationError(
            f"{ds.path}/manifest.json: shard {bare[0]} ({len(bare)} of {len(ds.shards)}) lists no `docs`: the "
            f"dataset predates provenance (each sample's document id, recorded in the manifest) and cannot be "
            f"checked against the held-out documents; rebuild it with the current tool: {REBUILD}")
    return {d for s in ds.shards for d in s.get("docs", ())}


def check_not_in_training(doc_names: list[str], manifests: list[str]) -> dict[str, int]:
    """Fail if any held-out document is the `doc` of a sample of a training dataset (ContaminationError
    names both); returns {dataset: distinct training docs} for the report."""
    seen = {}
    for m in manifests:
        docs = training_sources(m)
        shared = sorted(set(doc_names) & docs)
        if shared:
            raise ContaminationError(
                f"held-out document {shared[0]!r} ({len(shared)} in all) is in the training dataset {m} "
                f"(the `doc` of its samples, listed in its manifest); evaluate on documents the model was not "
                f"trained on: lower heldout_docs or rebuild the training data without them")
        seen[str(m)] = len(docs)
    return seen


def split_sentences(text: str) -> list[str]:
    """Every sentence of a document, in order."""
    return [s.strip() for s in re.split(r"(?<=[.?!])\s+(?=[A-Z])", re.sub(r"\s+", " ", text)) if s.strip()]


def plain(s: str, min_words: int = 5, max_words: int = 22) -> bool:
    """A sentence TTS can read and ASR can score: plain words and punctuation, 5-22 words."""
    return bool(_PLAIN.match(s)) and min_words <= len(s.split()) <= max_words and not s.isupper()
