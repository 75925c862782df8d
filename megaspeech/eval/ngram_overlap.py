"""Text n-gram overlap of the held-out documents with the training data (the second contamination check).

Provenance (megaspeech.eval.contamination) catches a held-out document under its own id; this check catches
its text under another id (a copy in a web crawl, a quotation, a re-spoken passage). The held-out
documents' n-grams (default 13 words, the GPT-3 / PaLM decontamination length) of normalised words
(lower case, letters, digits and inner apostrophes; punctuation dropped) are indexed as hashes (a set of
~6,000 per address), and the training text streams through the index:
  text         tokens decoded with the dataset's own text tokenizer (its vocab.json)
  speech       the transcript (`transcript`, else the `text` ids decoded); unsupervised speech has none
  interleaved  each run of text ids decoded (speech spans cut the run), and the spoken QA fields
               `context`, `question`, `answer` (the passage a QA sample's speech was made from)
  audio        the transcript
Each dataset is scanned whole when its manifest holds at most `sample_tokens` tokens (audio: transcript
words), otherwise shard by shard in a seeded random order until that many are read (`exhaustive`: false).
An n-gram that spans two samples (a document cut into several text samples) is not seen.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from megaspeech.config.eval_suite import SuiteConfig
from megaspeech.eval.contamination import ContaminationError
from megaspeech.eval.scores import proportion

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
QA_FIELDS = ("context", "question", "answer")


def words(text: str) -> list[str]:
    """Normalised words: lower case, punctuation dropped ("U.S." -> ["u", "s"])."""
    return _WORD.findall(text.lower())


def gram_hashes(ws: list[str], n: int) -> np.ndarray:
    """uint64 [len(ws) - n + 1]: a polynomial hash of each n-gram of words (over the words' own hashes;
    this process only: Python salts str hashes per process, and the index lives in one)."""
    if len(ws) < n:
        return np.zeros(0, np.uint64)
    w = np.fromiter((hash(x) for x in ws), np.int64, len(ws)).view(np.uint64)
    h = np.zeros(len(ws) - n + 1, np.uint64)
    for j in range(n):  # wraps modulo 2**64
        h = h * np.uint64(1_000_003) + w[j:j + len(h)]
    return h


class HeldoutIndex:
    """Every n-gram hash of the held-out documents, sorted (a vectorised lookup), each with the documents
    holding it (`docs[start[k]:end[k]]` for key k)."""

    def __init__(self, docs: list[tuple[str, str]], n: int = 13):
        self.n, self.names = n, [name for name, _ in docs]
        self._words = [words(text) for _, text in docs]
        per = [np.unique(gram_hashes(ws, n)) for ws in self._words] or [np.zeros(0, np.uint64)]
        h = np.concatenate(per)
        d = np.concatenate([np.full(len(a), i, np.int32) for i, a in enumerate(per)])
        order = np.argsort(h, kind="stable")
        h, self._docs = h[order], d[order]
        self.keys, self._start = np.unique(h, return_index=True)
        self._end = np.append(self._start[1:], len(h))

    def __len__(self) -> int:
        return len(self.keys)

    def matches(self, text: str) -> list[int]:
        """Key numbers (into `keys`) of the n-grams of `text` that a held-out document holds."""
        g = gram_hashes(words(text), self.n)
        if not len(g) or not len(self.keys):
            return []
        k = np.minimum(np.searchsorted(self.keys, g), len(self.keys) - 1)
        return k[self.keys[k] == g].tolist()

    def docs(self, k: int) -> list[int]:
        """The held-out documents holding key k."""
        return self._docs[self._start[k]:self._end[k]].tolist()

    def example(self, doc: int, k: int) -> str:
        """The n-gram of held-out document `doc` with key k (for the report)."""
        ws = self._words[doc]
        i = np.flatnonzero(gram_hashes(ws, self.n) == self.keys[k])
        return " ".join(ws[i[0]:i[0] + self.n]) if len(i) else ""


def sample_texts(kind: str, sample: dict, tok) -> list[str]:
    """The text of one training sample that the check reads (module docstring); tok: TextTokenizer or None."""
    if kind in ("audio", "speech") and isinstance(sample.get("transcript"), str):
        return [sample["transcript"]]
    out = []
    if tok is not None:
        if kind == "text":
            out.append(tok.decode(sample["tokens"]))
        elif kind == "speech" and "text" in sample:
            out.append(tok.decode(sample["text"]))
        elif kind == "interleaved":
            t = np.asarray(sample["tokens"])
            is_text = t < tok.vocab.text_size
            cuts = np.flatnonzero(np.diff(is_text.astype(np.int8))) + 1
            out += [tok.decode(run) for run in np.split(t, cuts) if run.size and run[0] < tok.vocab.text_size]
    return out + [sample[f] for f in QA_FIELDS if isinstance(sample.get(f), str)]


def _tokenizer(path: Path, kind: str):
    if kind == "audio" or not (path / "vocab.json").is_file():
        return None
    from megaspeech.data.text import TextTokenizer
    try:
        return TextTokenizer.from_dir(path)
    except ValueError:  # a vocab without a text tokenizer (unsupervised speech): nothing to decode
        return None


def scan_dataset(path: str | Path, index: HeldoutIndex, sample_tokens: int, seed: int = 0, top: int = 5) -> dict:
    """Stream one training dataset through the index -> its report entry (module docstring)."""
    from megaspeech.data.shards import Dataset, read_shard
    ds = Dataset(path)
    tok = _tokenizer(ds.path, ds.kind)
    order = np.random.default_rng(seed).permutation(len(ds.shards)) if ds.num_tokens > sample_tokens \
        else np.arange(len(ds.shards))
    hits: dict[int, dict] = {}  # held-out doc -> {"ngrams": set of keys, first training sample}
    samples = tokens = nwords = shards = 0
    for i in order:
        if shards and tokens >= sample_tokens:
            break
        s = ds.shards[int(i)]
        for key, smp in read_shard(ds.path / s["name"], ds.kind, s["sha256"]):
            for text in sample_texts(ds.kind, smp, tok):
                nwords += len(text.split())
                for k in index.matches(text):
                    for d in index.docs(k):
                        e = hits.setdefault(d, {"ngrams": set(), "at": f"{s['name']}:{key}",
                                                "training_doc": smp.get("doc", smp.get("source")), "key": k})
                        e["ngrams"].add(k)
            samples += 1
        shards += 1
        tokens = tokens + s["tokens"] if ds.kind != "audio" else nwords
    ranked = sorted(hits.items(), key=lambda kv: -len(kv[1]["ngrams"]))
    return {"path": str(path), "kind": ds.kind, "exhaustive": shards == len(ds.shards), "shards_scanned": shards,
            "shards": len(ds.shards), "samples_scanned": samples, "tokens_scanned": tokens, "words_scanned": nwords,
            "heldout_docs_hit": sorted(index.names[d] for d in hits),
            "top_hits": [{"heldout_doc": index.names[d], "ngrams": len(e["ngrams"]), "first_training_sample": e["at"],
                          "first_training_doc": e["training_doc"], "example": index.example(d, e["key"])}
                         for d, e in ranked[:top]]}


def ngram_overlap(docs: list[tuple[str, str]], manifests: list[str], n: int = 13, sample_tokens: int = 5_000_000,
                  seed: int = 0) -> dict:
    """Every training dataset's n-gram overlap with the held-out documents [(name, text)] -> the
    `contamination` entry of eval.json (per dataset: what was scanned, the held-out documents hit, the
    top hits with an example n-gram; overall: the documents hit in any dataset)."""
    index = HeldoutIndex(docs, n)
    per = [scan_dataset(m, index, sample_tokens, seed) for m in manifests]
    hit = sorted({d for p in per for d in p["heldout_docs_hit"]})
    return {"ngram": n, "heldout_docs": len(docs), "heldout_ngrams": len(index), "sample_tokens": sample_tokens,
            "datasets": per, "heldout_docs_hit": hit}


def overlap_check(suite: SuiteConfig, docs: list[tuple[str, str]]) -> dict | None:
    """The suite's n-gram check (SuiteConfig.contamination_*) -> eval.json's `contamination`, or None with
    no training_manifests. Raises ContaminationError when more held-out documents are hit than
    contamination_max_docs_hit (null: reported only)."""
    if not suite.training_manifests or not suite.contamination_ngram:
        return None
    res = ngram_overlap(docs, suite.training_manifests, suite.contamination_ngram, suite.contamination_sample_tokens,
                        suite.seed)
    cap = suite.contamination_max_docs_hit
    if cap is not None and len(res["heldout_docs_hit"]) > cap:
        worst = next(h for p in res["datasets"] for h in p["top_hits"])
        raise ContaminationError(
            f"{len(res['heldout_docs_hit'])} held-out documents share a {res['ngram']}-word sequence with the "
            f"training data (contamination_max_docs_hit={cap}); e.g. {worst['heldout_doc']!r} in "
            f"{worst['first_training_sample']}: {worst['example']!r}. Rebuild the training data without that "
            f"text, or raise the threshold")
    return res


def overlap_row(res: dict | None, n: int = 13) -> tuple[str, str, dict, str]:
    """(task, direction, result, note) of the report table's contamination row: the share of held-out
    documents with an n-gram in the training data (Wilson interval)."""
    task = f"contamination ({n if res is None else res['ngram']}-gram overlap)"
    if res is None:
        return task, "-", {"metric": "held-out docs hit",
                           "skipped": "no training_manifests (or contamination_ngram=0)"}, ""
    hit = len(res["heldout_docs_hit"])
    sampled = [p for p in res["datasets"] if not p["exhaustive"]]
    note = (f"{len(sampled)} of {len(res['datasets'])} datasets sampled ({res['sample_tokens']:,} tokens each)"
            if sampled else f"all {len(res['datasets'])} training datasets read whole")
    return task, "-", proportion(np.array([1.0] * hit + [0.0] * (res["heldout_docs"] - hit)), "held-out docs hit"), note
