"""Text shards -> synthetic interleaved speech-text shards (arXiv 2411.17607, section 2.2).

Per document: split into words (spans.py), sample word-aligned spans with corruption ratio eta,
convert every span's text ids to speech codes with a converter (the text-to-token model, in large
batches), and write

    tokens    text ids of the text words, and for each speech span
              <|begin_of_speech|> codes + vocab.speech_offset <|end_of_speech|>
    modality  0 on text tokens, 1 on a speech span including its two markers
    spans     int32 [2m]: token ranges (a0, b0, a1, b1, ...) of the original document that became
              speech, in order (provenance; lets evaluation compare generated codes with the text)
    source    copied from the input when present
    doc       the input sample's `doc` (provenance; text shards written before it carry the document
              name in `source`, which prep_text always wrote there)

Work split (the project's resume rule, megaspeech/data/shards.py): input shards are grouped into
parts of `shards_per_part` consecutive shards; part i writes part-<i>-*.tar and its part manifest
last, finished parts are skipped on restart, and N workers take disjoint part ranges. Spans are
drawn per document (seeded by its key) and converter batches never cross a part, so the output
bytes are the same for any number of workers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from megaspeech.config.load import check
from megaspeech.data.render import speech_span
from megaspeech.data.shards import Dataset, merge_parts, part_done, part_writer, parts_for_worker, read_shard
from megaspeech.synth.spans import doc_rng, sample_spans, word_bounds
from megaspeech.vocab import Vocab

log = logging.getLogger(__name__)


class Converter(Protocol):
    """Text spans -> speech codes. `version` names the model (recorded in the manifest)."""
    version: str

    def convert(self, texts: list[np.ndarray], n_words: list[int], batch_id: int) -> list[np.ndarray]:
        """texts: text ids int [T_i] per span; n_words: words per span (length control); batch_id:
        deterministic id of this call (seeds sampling). Returns raw codes int [C_i] in [0, speech_size)."""
        ...


@dataclass
class InterleaveConfig:
    eta: float = 0.3  # share of words converted to speech (paper: 0.2-0.4)
    span_mean: float = 10.0  # mean span length in words: 1 + Poisson(span_mean - 1)
    seed: int = 0
    min_words: int = 8  # shorter documents are copied as plain text spans (modality 0 throughout)
    docs_per_batch: int = 64  # documents whose spans go to the converter in one call
    shards_per_part: int = 1  # input shards per work unit (resume granularity)
    max_shard_bytes: int = 128 << 20

    def __post_init__(self):
        check(0.0 <= self.eta <= 1.0, "interleave.eta", f"must be in [0, 1] (paper: 0.2-0.4), got {self.eta}")
        check(self.span_mean >= 1, "interleave.span_mean", "must be >= 1 word")
        check(self.docs_per_batch >= 1, "interleave.docs_per_batch", "must be >= 1")
        check(self.shards_per_part >= 1, "interleave.shards_per_part", "must be >= 1")


def plan_document(tokens: np.ndarray, key: str, starts_word: np.ndarray | None, cfg: InterleaveConfig,
                  words: np.ndarray | None = None) -> list[tuple[int, int, int]]:
    """-> [(token_start, token_end, n_words)] of the spans to convert, in document order.
    `words`: the sample's stored word starts (from tokenizer offsets); else the piece table."""
    bounds = word_bounds(tokens, starts_word, words)
    n_words = len(bounds) - 1
    if n_words < cfg.min_words:
        return []
    spans = sample_spans(n_words, cfg.eta, cfg.span_mean, doc_rng(cfg.seed, key))
    return [(int(bounds[a]), int(bounds[b]), b - a) for a, b in spans]


def assemble(tokens: np.ndarray, spans: list[tuple[int, int, int]], codes: list[np.ndarray],
             vocab: Vocab) -> dict[str, np.ndarray]:
    """Document text ids + converted spans -> interleaved sample fields (tokens, modality, spans)."""
    toks, mods, pos = [], [], 0
    for (a, b, _), c in zip(spans, codes):
        toks.append(np.asarray(tokens[pos:a], np.int64))
        mods.append(np.zeros(a - pos, np.uint8))
        sp = speech_span(c, vocab)  # the one span layout (megaspeech.data.render)
        toks.append(sp)
        mods.append(np.ones(len(sp), np.uint8))
        pos = b
    toks.append(np.asarray(tokens[pos:], np.int64))
    mods.append(np.zeros(len(tokens) - pos, np.uint8))
    flat = np.array([x for a, b, _ in spans for x in (a, b)], np.int32)
    return {"tokens": np.concatenate(toks), "modality": np.concatenate(mods), "spans": flat}


def split_interleaved(tokens: np.ndarray, vocab: Vocab) -> list[tuple[str, np.ndarray]]:
    """Interleaved tokens -> [("text", ids) | ("speech", raw codes)] in order (inverse of assemble)."""
    t = np.asarray(tokens, np.int64)
    out, pos = [], 0
    opens, ends = np.flatnonzero(t == vocab.bos_speech_id), np.flatnonzero(t == vocab.eos_speech_id)
    for o in opens:
        if o < pos:
            raise ValueError(f"nested <|begin_of_speech|> at token {o}")
        after = ends[ends > o]
        if after.size == 0:
            raise ValueError(f"<|begin_of_speech|> at token {o} is never closed")
        close = int(after[0])
        if o > pos:
            out.append(("text", t[pos:o]))
        out.append(("speech", t[o + 1:close] - vocab.speech_offset))
        pos = close + 1
    if pos < len(t):
        out.append(("text", t[pos:]))
    return out


def interleave_docs(docs: list[tuple[str, dict]], starts_word: np.ndarray | None, converter: Converter,
                    vocab: Vocab, cfg: InterleaveConfig, batch_id: int) -> list[tuple[str, dict]]:
    """One converter call for the spans of `docs` [(key, text sample)] -> [(key, interleaved sample)]."""
    plans = [plan_document(s["tokens"], k, starts_word, cfg, s.get("words")) for k, s in docs]
    texts = [s["tokens"][a:b] for (_, s), p in zip(docs, plans) for a, b, _ in p]
    words = [w for p in plans for _, _, w in p]
    codes = converter.convert(texts, words, batch_id) if texts else []
    if len(codes) != len(texts):
        raise RuntimeError(f"converter {converter.version} returned {len(codes)} spans for {len(texts)}")
    out, i = [], 0
    for (key, s), p in zip(docs, plans):
        sample = assemble(s["tokens"], p, codes[i:i + len(p)], vocab)
        i += len(p)
        if "source" in s:
            sample["source"] = s["source"]
        sample["doc"] = s.get("doc", s.get("source"))
        if not sample["doc"]:
            raise ValueError(f"text sample {key!r}: neither `doc` nor `source` names its document (provenance "
                             f"for the contamination check); rebuild the text shards with launch/prepare_data.py text")
        out.append((key, sample))
    return out


def run_worker(src: str | Path, out: str | Path, converter: Converter, vocab: Vocab, starts_word: np.ndarray | None,
               cfg: InterleaveConfig, worker: int = 0, workers: int = 1,
               on_part: Callable[[int, dict], None] | None = None) -> dict:
    """Interleave this worker's parts of text dataset `src` into `out`; merges the dataset manifest
    when every part is finished (by whichever worker finishes last). Returns counters."""
    ds = Dataset(src, vocab, kind="text")
    n_parts = -(-len(ds.shards) // cfg.shards_per_part)
    meta = {"source": str(src), "eta": cfg.eta, "span_mean": cfg.span_mean, "seed": cfg.seed,
            "min_words": cfg.min_words, "docs_per_batch": cfg.docs_per_batch,
            "shards_per_part": cfg.shards_per_part, "text_to_token": converter.version}
    stats = {"parts_done": 0, "parts_skipped": 0, "docs": 0, "speech_spans": 0}
    for part in parts_for_worker(n_parts, worker, workers):
        if part_done(out, part):
            stats["parts_skipped"] += 1
            continue
        shards = ds.shards[part * cfg.shards_per_part:(part + 1) * cfg.shards_per_part]
        with part_writer(out, "interleaved", vocab, part, meta=meta, max_bytes=cfg.max_shard_bytes) as w:
            batch, b = [], 0

            def flush():
                nonlocal b
                for key, sample in interleave_docs(batch, starts_word, converter, vocab, cfg, part * 1_000_003 + b):
                    w.write(key, sample)
                    stats["docs"] += 1
                    stats["speech_spans"] += len(sample["spans"]) // 2
                batch.clear()
                b += 1
            for s in shards:
                for key, sample in read_shard(ds.path / s["name"], "text", s["sha256"], vocab):
                    batch.append((key, sample))
                    if len(batch) == cfg.docs_per_batch:
                        flush()
            if batch:
                flush()
        stats["parts_done"] += 1
        if on_part is not None:
            on_part(part, stats)
    if all(part_done(out, i) for i in range(n_parts)):
        merge_parts(out, n_parts)
        stats["merged"] = True
    return stats
