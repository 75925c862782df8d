"""The token layout of every training document and every prompt, written once.

A document is built from parts: ("text", text ids) or ("speech", raw codes 0..K-1). A text part is its
ids as they are (modality 0); a speech part is a span <|begin_of_speech|> codes + speech_offset
<|end_of_speech|> (modality 1, both markers included). Returned arrays: tokens int64 [T], modality
uint8 [T].

Training documents (megaspeech.data.packing.format_sample renders every shard sample with these):
  text          render_text(ids)              <|bos|> ids <|eos|>
  speech        render_speech(codes)          <|begin_of_speech|> codes <|end_of_speech|>   one utterance
  ASR pair      render_pair(codes, ids, True)  <|begin_of_speech|> codes <|end_of_speech|> ids <|eos|>
  TTS pair      render_pair(codes, ids, False) <|bos|> ids <|begin_of_speech|> codes <|end_of_speech|>
  interleaved   render_interleaved(tokens, modality)  <|bos|> body <|eos|>, the body stored in the shard:
                render_parts(parts), text words with speech spans, never two spans adjacent
                (synth.interleave.assemble), so <|end_of_speech|><|begin_of_speech|> never occurs inside
                one document: packing puts it only between two unrelated utterances
  QA            render_interleaved(*render_qa(context, question_ids, answer_ids))
                <|bos|> <|user|> context question <|assistant|> answer <|eos|>  (synth.speech_qa; the
                context is a list of parts, a spoken passage in the QA shards)

A prompt is such a document cut where the model is to go on (`prompt` for the four generation modes;
the evaluation suite cuts whole documents, megaspeech.eval.prompts). `split_encode` gives the ids that
consecutive pieces of text have inside one document (one tokenization of the joined text), so a
prompt and its continuation are the ids training saw for that content.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from megaspeech.vocab import Vocab

Part = tuple[str, np.ndarray]  # ("text", text ids) | ("speech", raw codes 0..K-1)


def speech_span(codes, vocab: Vocab) -> np.ndarray:
    """raw codes int [C] -> <|begin_of_speech|> codes + speech_offset <|end_of_speech|>, int64 [C + 2]."""
    sp = np.empty(len(codes) + 2, np.int64)
    sp[0], sp[-1] = vocab.bos_speech_id, vocab.eos_speech_id
    np.add(np.asarray(codes), vocab.speech_offset, out=sp[1:-1], casting="unsafe")
    return sp


def render_parts(parts: Sequence[Part], vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """[("text", ids) | ("speech", codes)] -> (tokens int64, modality uint8), concatenated in order."""
    toks, mods = [np.zeros(0, np.int64)], [np.zeros(0, np.uint8)]
    for kind, x in parts:
        if kind == "text":
            toks.append(np.asarray(x, np.int64))
            mods.append(np.zeros(len(x), np.uint8))
        elif kind == "speech":
            toks.append(speech_span(x, vocab))
            mods.append(np.ones(len(x) + 2, np.uint8))
        else:
            raise ValueError(f"part kind {kind!r}: must be 'text' or 'speech'")
    return np.concatenate(toks), np.concatenate(mods)


def _wrap(first: list[int], body: np.ndarray, last: list[int], mod: np.ndarray | None = None):
    toks = np.concatenate([np.asarray(first, np.int64), np.asarray(body, np.int64), np.asarray(last, np.int64)])
    m = np.zeros(len(toks), np.uint8)
    if mod is not None:
        m[len(first):len(first) + len(body)] = mod
    return toks, m


def render_text(ids, vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """A text document: <|bos|> ids <|eos|>, modality 0."""
    return _wrap([vocab.bos_id], ids, [vocab.eos_id])


def render_speech(codes, vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """One utterance of unsupervised speech: its span alone (no <|bos|>), modality 1."""
    sp = speech_span(codes, vocab)
    return sp, np.ones(len(sp), np.uint8)


def render_pair(codes, ids, vocab: Vocab, asr: bool) -> tuple[np.ndarray, np.ndarray]:
    """A transcribed utterance: ASR (speech then text <|eos|>) or TTS (<|bos|> text then speech)."""
    if asr:
        return render_parts([("speech", codes), ("text", np.concatenate([np.asarray(ids, np.int64), [vocab.eos_id]]))],
                            vocab)
    return render_parts([("text", np.concatenate([[vocab.bos_id], np.asarray(ids, np.int64)])), ("speech", codes)],
                        vocab)


def render_interleaved(tokens, modality, vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """An interleaved (or QA) document from its stored body: <|bos|> body <|eos|>, body modality kept."""
    return _wrap([vocab.bos_id], tokens, [vocab.eos_id], np.asarray(modality, np.uint8))


def render_qa(context: Sequence[Part], question_ids, answer_ids, vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """The body of a QA sample: <|user|> context question <|assistant|> answer (tokens, modality);
    a training document once wrapped by render_interleaved. context: parts (a spoken passage in the
    QA shards); question_ids / answer_ids: text ids (either may be empty)."""
    return render_parts([("text", [vocab.special("<|user|>")]), *context, ("text", question_ids),
                         ("text", [vocab.special("<|assistant|>")]), ("text", answer_ids)], vocab)


def prompt(mode: str, vocab: Vocab, text_ids=None, codes=None) -> np.ndarray:
    """The prompt of a generation mode X->Y, a training document cut where the model goes on, int64 [T]:
      T->T  <|bos|> ids                              (a text document)
      T->S  <|bos|> ids <|begin_of_speech|>          (a TTS pair)
      S->T  <|begin_of_speech|> codes <|end_of_speech|>   (an ASR pair)
      S->S  <|begin_of_speech|> codes                (one utterance)
    text_ids: text ids (T->*); codes: raw codes 0..K-1 (S->*)."""
    if mode in ("T->T", "T->S"):
        toks = render_pair(np.zeros(0, np.int64), text_ids, vocab, asr=False)[0]
        return toks[:-1] if mode == "T->S" else toks[:-2]
    if mode in ("S->T", "S->S"):
        sp = speech_span(codes, vocab)
        return sp if mode == "S->T" else sp[:-1]
    raise ValueError(f"mode {mode!r}: must be one of T->T, T->S, S->T, S->S")


def split_encode(tok, pieces: Sequence[str]) -> list[np.ndarray]:
    """The ids each piece of text has inside one document: " ".join(pieces) encoded once (a
    megaspeech.data.text.TextTokenizer) and cut where each piece starts (the tokenizer's offsets:
    a word's leading-space marker, SentencePiece's "▁" or byte-level BPE's "Ġ", goes with the word).
    -> one int64 array per piece; their concatenation is tok.encode(" ".join(pieces))."""
    text = " ".join(pieces)
    starts = np.cumsum([0] + [len(p) + 1 for p in pieces[:-1]])
    if tok.hf is not None:
        e = tok.hf.encode(text, add_special_tokens=False)
        ids, begin = np.asarray(e.ids, np.int64), np.array([b for b, _ in e.offsets], np.int64)
    else:  # SentencePiece offsets are bytes of the input
        proto = tok.sp.encode(text, out_type="proto")
        ids = np.array([p.id for p in proto.pieces], np.int64)
        begin = np.array([p.begin for p in proto.pieces], np.int64)
        starts = np.cumsum([0] + [len(p.encode()) + 1 for p in pieces[:-1]])
    # a piece owns the tokens that begin at or after its separating space (start - 1)
    cut = np.searchsorted(begin, np.maximum(starts[1:] - 1, 0), side="left") if len(pieces) > 1 else []
    return [np.asarray(x, np.int64) for x in np.split(ids, cut)]
