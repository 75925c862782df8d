"""Task builders: items made offline from held-out real documents (megaspeech.eval.contamination).

Every item is a JSON-able dict; `texts` lists the strings a spoken direction synthesizes.
  story (StoryCloze-style)  context = `k` consecutive sentences, endings = [true next sentence,
                            distractor], label 0. easy: the distractor is a sentence of another held-out
                            document (topic-style); hard: a sentence from elsewhere in the same document
                            (outside the context window, at least 3 sentences away from the true
                            ending, and not equal to any sentence of the window or the ending).
  word (sWUGGY-style)       endings = [a real word of the held-out text, a pronounceable non-word made
                            from it by swapping one vowel and one inner consonant], no context; a
                            non-word is none of: a word of the held-out text, a piece of the model's
                            text tokenizer (tokenizer_words), a word of the dictionary (dictionary_words:
                            /usr/share/dict/words, Debian's wamerican, .ci/apt-packages.txt).
  qa                        passage = `qa_context` consecutive sentences; question/answer by the
                            extractive template generator of megaspeech.synth.speech_qa (cloze on a
                            content word, or "what is said right after ..."); every other item of each
                            kind.
  asr / tts                 single plain held-out sentences.
Sampling is seeded; the same config builds the same items.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from megaspeech.eval.contamination import plain, split_sentences

VOWELS, CONSONANTS = "aeiou", "bcdfghklmnprstvwz"
DICTIONARY = "/usr/share/dict/words"


def story_items(docs: list[tuple[str, str]], n: int, k: int, seed: int, hard: bool) -> list[dict]:
    rng = np.random.default_rng([seed, 1 + hard])
    sents = [split_sentences(t) for _, t in docs]
    ok = [[plain(s) for s in ss] for ss in sents]
    windows = [(d, i) for d, ss in enumerate(sents) for i in range(len(ss) - k) if all(ok[d][i:i + k + 1])]
    items = []
    for w in rng.permutation(len(windows)):
        if len(items) == n:
            break
        d, i = windows[w]
        true, window = sents[d][i + k], set(sents[d][i:i + k + 1])  # the context and the true ending
        if hard:  # outside the window [i, i+k], >= 3 sentences from the ending, no repeat of the window
            pool = [s for j, s in enumerate(sents[d])
                    if ok[d][j] and not i <= j <= i + k and abs(j - (i + k)) >= 3 and s not in window]
        else:
            other = int(rng.integers(len(docs) - 1))
            other += other >= d
            pool = [s for j, s in enumerate(sents[other]) if ok[other][j] and s not in window]
        if not pool:
            continue
        items.append({"id": f"story_{'hard' if hard else 'easy'}_{len(items):05d}", "doc": docs[d][0],
                      "context": " ".join(sents[d][i:i + k]), "endings": [true, pool[int(rng.integers(len(pool)))]],
                      "label": 0})
    return items


def dictionary_words(path: str | Path | None = DICTIONARY) -> set[str]:
    """Lower-case alphabetic words of a word list (one a line; Debian's wamerican at the default
    path). None: no dictionary (the non-words are then checked against the text and tokenizer only)."""
    if path is None:
        return set()
    if not Path(path).is_file():
        raise FileNotFoundError(f"dictionary {path} not found: install Debian's wamerican (apt-get install "
                                f"wamerican, listed in .ci/apt-packages.txt) or set dictionary to a word list")
    return {w for w in Path(path).read_text(errors="ignore").lower().split() if w.isalpha() and w.isascii()}


def tokenizer_words(tok) -> set[str]:
    """Lower-case alphabetic pieces of a text tokenizer (megaspeech.data.text.TextTokenizer): every id
    decoded alone, e.g. SentencePiece's "▁ardor" or byte-level BPE's "Ġardor" -> "ardor"."""
    n = tok.hf.get_vocab_size(with_added_tokens=False) if tok.hf is not None else tok.sp.get_piece_size()
    pieces = (tok._decode_text([i]).strip().lower() for i in range(n))
    return {p for p in pieces if p.isalpha() and p.isascii()}


def nonword(word: str, rng: np.random.Generator, lexicon: set[str]) -> str | None:
    """A pronounceable non-word from `word`: one vowel and one inner consonant replaced (same
    letter classes, so the syllable shape stays), not in `lexicon`."""
    for _ in range(20):
        w = list(word)
        vi = [i for i, c in enumerate(w) if c in VOWELS]
        ci = [i for i, c in enumerate(w) if c in CONSONANTS and 0 < i < len(w) - 1]
        if not vi or not ci:
            return None
        i, j = int(rng.choice(vi)), int(rng.choice(ci))
        w[i] = str(rng.choice([v for v in VOWELS if v != w[i]]))
        w[j] = str(rng.choice([c for c in CONSONANTS if c != w[j]]))
        cand = "".join(w)
        if cand not in lexicon:
            return cand
    return None


def word_items(docs: list[tuple[str, str]], n: int, seed: int, lexicon: set[str] | None = None,
               n_pieces=None) -> list[dict]:
    """n (word, non-word) pairs. `n_pieces(text) -> int` (the model's text tokenizer): only pairs that
    tokenize into the same number of pieces are kept, as sWUGGY matches its pairs in length; otherwise
    the scoring rule, not the model, decides: a non-word splits into more pieces, which wins under the
    mean per-token NLL and loses under the summed NLL, whatever the model knows."""
    rng = np.random.default_rng([seed, 3])
    counts = Counter(w for _, t in docs for w in re.findall(r"\b[a-z]+\b", t))
    lex = set(counts) | (lexicon or set())
    words = sorted(w for w, c in counts.items() if c >= 2 and 5 <= len(w) <= 10)
    items = []
    for w in (words[i] for i in rng.permutation(len(words))):
        if len(items) == n:
            break
        for _ in range(1 if n_pieces is None else 10):
            nw = nonword(w, rng, lex)
            if nw and (n_pieces is None or n_pieces(w) == n_pieces(nw)):
                items.append({"id": f"word_{len(items):05d}", "context": "", "endings": [w, nw], "label": 0})
                break
    return items


def qa_items(docs: list[tuple[str, str]], n: int, k: int, seed: int, writer=None) -> list[dict]:
    """n questions with short answers, each on a passage of k held-out sentences. Template questions
    (synth.speech_qa.template_pairs) alternate cloze and continuation; with `writer` (a
    synth.speech_qa.LMQuestionWriter) every second item is instead a question the LM wrote, kept
    only if it passes the QA data's own filter (grounded short answer, well-formed, no duplicate)."""
    from megaspeech.synth.speech_qa import filter_pair, template_pairs
    rng = np.random.default_rng([seed, 4])
    passages = []
    for name, t in docs:
        ss = split_sentences(t)
        passages += [(name, " ".join(ss[i:i + k])) for i in range(0, len(ss) - k + 1, k) if all(map(plain, ss[i:i + k]))]
    passages = [passages[p] for p in rng.permutation(len(passages))]
    written: list[tuple[str, str, str, str]] = []
    if writer is not None:  # LM questions from the first passages, template ones from the rest
        want, seen = n // 2, set()
        cand = passages[:8 * want + 16]  # SmolLM2-135M-Instruct: ~10% of its pairs pass the filter
        for (name, passage), pairs in zip(cand, writer([p for _, p in cand])):
            if len(written) < want and pairs and filter_pair(passage, *pairs[0], writer.cfg, seen) is None:
                written.append((name, passage, *pairs[0]))
        passages = passages[len(cand):]
    items: list[dict] = []
    for name, passage in passages:
        if len(items) + len(written) >= n:
            break
        t = len(items)
        pairs = template_pairs(passage, 2, seed)
        if len(pairs) < 1 + t % 2:
            continue
        q, a = pairs[t % 2]  # alternate cloze / continuation questions
        items.append({"doc": name, "passage": passage, "question": q, "answer": a, "writer": "template"})
    lm = [{"doc": d, "passage": p, "question": q, "answer": a, "writer": "lm"} for d, p, q, a in written]
    mixed = [x for pair in zip(items, lm) for x in pair] + items[len(lm):] + lm[len(items):]
    return [{"id": f"qa_{i:05d}", **it} for i, it in enumerate(mixed[:n])]


def sentence_items(docs: list[tuple[str, str]], n: int, seed: int, tag: str) -> list[dict]:
    rng = np.random.default_rng([seed, 5 if tag == "asr" else 6])
    sents = sorted({s for _, t in docs for s in split_sentences(t) if plain(s)})
    return [{"id": f"{tag}_{i:05d}", "text": sents[j]} for i, j in enumerate(rng.permutation(len(sents))[:n])]
