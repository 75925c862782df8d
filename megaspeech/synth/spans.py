"""Word-aligned span sampling for synthetic interleaved data (GLM-4-Voice, arXiv 2411.17607).

Words come from the text tokenizer's offsets: text shards written by launch/prepare_data.py store
`words` (token indices where a word begins, megaspeech.data.text.word_starts) for SentencePiece and
Hugging Face tokenizers alike. Older SentencePiece shards without that field fall back to the pieces:
a piece starting with "▁" (U+2581) opens a word, every other piece belongs to the word before it.
Either way a span boundary always falls between two words, never inside one.

Span sampler (per document of n words, corruption ratio eta):
  K = round(eta * n) words are converted to speech, exactly (the ratio is hit per document up to
  rounding, so it is hit over any corpus). Span lengths in words are drawn as 1 + Poisson(mean - 1)
  (mean `span_mean`, default 10: sentence-fragment spans like the paper's "<speech of 'a sunny'>")
  until they cover K; the last one is cut to fit. The n - K text words are split into gaps around
  the spans, uniformly over all compositions with every inner gap >= 1 word (so two speech spans
  never touch and read as one); when there are too few text words for that, spans are merged.
All draws come from a generator seeded by (seed, document key), so a document's spans do not
depend on which worker, shard or batch processes it.
"""
from __future__ import annotations

import zlib

import numpy as np

WORD_START = "\u2581"


def word_start_table(sp) -> np.ndarray:
    """SentencePieceProcessor -> bool [n_pieces]: True where the piece opens a word."""
    return np.array([sp.id_to_piece(i).startswith(WORD_START) for i in range(sp.get_piece_size())], dtype=bool)


def word_bounds(tokens: np.ndarray, starts_word: np.ndarray | None, words: np.ndarray | None = None) -> np.ndarray:
    """tokens int [T] (text ids) -> int64 [n_words + 1]: token index where each word begins, then T.
    `words` (int [n_words], the sample's stored word starts) wins over the per-piece table
    `starts_word` (bool [n_pieces]). The first token always opens a word (a document may begin mid-word)."""
    t = np.asarray(tokens)
    if t.size == 0:
        return np.zeros(1, np.int64)
    if words is not None:
        w = np.asarray(words, np.int64)
        if w.size and (w.min() < 0 or w.max() >= t.size or np.any(np.diff(w) <= 0)):
            raise ValueError(f"`words` must be increasing token indices in [0, {t.size}), got {w[:8]}...")
        return np.unique(np.concatenate([[0], w, [t.size]])).astype(np.int64)
    if starts_word is None:
        raise ValueError("this text sample has no `words` field and no SentencePiece word table was given: "
                         "re-create the text shards with launch/prepare_data.py (it stores word starts)")
    is_start = starts_word[t]
    is_start[0] = True
    return np.concatenate([np.flatnonzero(is_start), [t.size]]).astype(np.int64)


def doc_rng(seed: int, key: str) -> np.random.Generator:
    """Generator of one document, from (seed, crc32 of its key): independent of worker layout."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def sample_spans(n_words: int, eta: float, span_mean: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Word ranges [(a, b)) converted to speech, sorted, disjoint, non-adjacent; their total is
    round(eta * n_words)."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if span_mean < 1:
        raise ValueError(f"span_mean must be >= 1 word, got {span_mean}")
    k = int(round(eta * n_words))
    if k == 0:
        return []
    if k == n_words:
        return [(0, n_words)]
    lengths: list[int] = []
    while sum(lengths) < k:
        lengths.append(1 + int(rng.poisson(span_mean - 1)))
    lengths[-1] -= sum(lengths) - k
    free = n_words - k
    # m spans need m - 1 inner gaps of >= 1 text word: merge neighbours until that fits
    while len(lengths) - 1 > free:
        last = lengths.pop()
        lengths[-1] += last
    m = len(lengths)
    # gaps g_0..g_m >= 0 with g_1..g_{m-1} >= 1, sum = free: a uniform composition (stars and bars)
    extra = free - (m - 1)
    cuts = np.sort(rng.choice(extra + m, size=m, replace=False))
    gaps = np.diff(np.concatenate([[-1], cuts, [extra + m]])) - 1
    gaps[1:m] += 1
    spans, pos = [], 0
    for i, ln in enumerate(lengths):
        pos += int(gaps[i])
        spans.append((pos, pos + ln))
        pos += ln
    return spans
