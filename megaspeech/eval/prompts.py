"""The suite's prompts: each item is a training document (megaspeech.data.render, the layouts that
megaspeech.data.packing.format_sample gives shard samples) cut where the model's answer begins.

Two-choice items (story, word): one document per candidate, the same content as training would
hold it; the prompt is the part the candidates share, each continuation the rest, without the
document's final <|eos|> (a speech span keeps its <|end_of_speech|>):
  T->T   a text document       <|bos|> context ending                   (one tokenization of the story)
  S->T   an interleaved one    <|bos|> [context] ending                 ([x]: x's speech span)
  T->S   an interleaved one    <|bos|> context [ending]
  S->S   one utterance         [context + ending]: the whole story read in one go by one voice,
                               the prompt being the codes the two readings share (the reading
                               differs only from where the endings do, as the tokenizer's
                               receptive field allows), so no span boundary inside the story
  word   T: <|bos|> word ; S: [word]  (a text document / one utterance; the prompt is its first token)
Text parts are the ids the pieces have inside one document (render.split_encode). Every spoken part
of an item is read by the item's one voice (`speak(text) -> raw codes`, bound to it by the caller).

QA items, qa_prompt chat: the QA shards' document (synth.speech_qa.qa_sample)
  <|bos|> <|user|> context question <|assistant|>   -> answer
  passage QA   context = the passage (S->T: its speech span; T->T: its text), question = text ids,
               the SALM format the QA data trains on
  knowledge QA no passage; the question is the context part (S->T: spoken; T->T: text)
qa_prompt plain (a pre-trained base model): the text / interleaved document
  <|bos|> [passage] "\\nQuestion: " question "\\nAnswer:"   (knowledge QA: "Question: " question ...)
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from megaspeech.data.render import (render_interleaved, render_parts, render_qa, render_speech, render_text,
                                    split_encode)
from megaspeech.vocab import Vocab

Speak = Callable[[str], np.ndarray]


def story_text(context: str, ending: str) -> str:
    """The story one S->S reading speaks: context and ending as one utterance."""
    return f"{context} {ending}"


def spoken_texts(item: dict, direction: str) -> list[str]:
    """The texts a direction of a two-choice item synthesizes (all with the item's voice)."""
    src, dst = direction.split("->")
    ctx, ends = item["context"], item["endings"]
    if not ctx:
        return list(ends) if dst == "S" else []
    if src == dst == "S":
        return [story_text(ctx, e) for e in ends]
    return [ctx] if src == "S" else list(ends) if dst == "S" else []


def _shared(docs: list[np.ndarray]) -> int:
    """Length of the prefix every document shares, leaving each at least one token to score."""
    n = min(len(d) for d in docs) - 1
    for d in docs[1:]:
        diff = np.flatnonzero(docs[0][:n] != d[:n])
        n = int(diff[0]) if diff.size else n
    return n


def story_documents(item: dict, direction: str, vocab: Vocab, tok, speak: Speak | None) -> tuple[list[np.ndarray], int]:
    """One training document per candidate (final <|eos|> cut) and where its continuation starts."""
    src, dst = direction.split("->")
    ctx, ends = item["context"], item["endings"]
    if not ctx:  # a word alone: a one-word text document or one utterance
        docs = [render_text(tok.encode(e), vocab)[0][:-1] if dst == "T" else render_speech(speak(e), vocab)[0]
                for e in ends]
        return docs, 1
    if src == dst == "S":
        docs = [render_speech(speak(story_text(ctx, e)), vocab)[0] for e in ends]
        return docs, _shared(docs)
    docs, cuts = [], set()
    for e in ends:
        ctx_ids, end_ids = split_encode(tok, [ctx, e])
        head = ("speech", speak(ctx)) if src == "S" else ("text", ctx_ids)
        tail = ("speech", speak(e)) if dst == "S" else ("text", end_ids)
        if src == dst == "T":
            doc = render_text(np.concatenate([ctx_ids, end_ids]), vocab)[0]
        else:
            doc = render_interleaved(*render_parts([head, tail], vocab), vocab)[0]
        docs.append(doc[:-1])
        cuts.add(1 + len(render_parts([head], vocab)[0]))
    if len(cuts) != 1 or any(not np.array_equal(d[:min(cuts)], docs[0][:min(cuts)]) for d in docs):
        raise ValueError(f"item {item.get('id')}: the context tokenizes differently before each ending; the text "
                         f"tokenizer merges across the space between them, so no prompt is shared")
    return docs, cuts.pop()


def two_choice_prompt(item: dict, direction: str, vocab: Vocab, tok, speak: Speak | None = None
                      ) -> tuple[np.ndarray, list[np.ndarray]]:
    """-> (prompt int64 [P], one continuation int64 [C_k] per candidate): prompt + continuation k is
    candidate k's training document without its final <|eos|>."""
    docs, cut = story_documents(item, direction, vocab, tok, speak)
    return docs[0][:cut], [d[cut:] for d in docs]


def qa_prompt(vocab: Vocab, tok, src: str, question: str, passage: str | None = None, speak: Speak | None = None,
              style: str = "chat") -> np.ndarray:
    """The prompt of a QA item (module docstring): passage QA with `passage`, knowledge QA without.
    src "S": the passage (knowledge QA: the question) is spoken by `speak`. -> int64 [P]."""
    spoken = src == "S"
    if style == "chat":
        if passage is not None:
            context, q = [("speech", speak(passage)) if spoken else ("text", tok.encode(passage))], tok.encode(question)
        else:
            context, q = [("speech", speak(question)) if spoken else ("text", tok.encode(question))], np.zeros(0)
        body = render_qa(context, q, np.zeros(0), vocab)
        return render_interleaved(*body, vocab)[0][:-1]
    if style != "plain":
        raise ValueError(f"qa_prompt {style!r}: must be chat or plain")
    if passage is None:
        parts = [("text", tok.encode("Question:")), ("speech", speak(question)), ("text", tok.encode("\nAnswer:"))] \
            if spoken else [("text", tok.encode(f"Question: {question}\nAnswer:"))]
    else:
        parts = [("speech", speak(passage)), ("text", tok.encode(f"\nQuestion: {question}\nAnswer:"))] if spoken \
            else [("text", tok.encode(f"{passage}\nQuestion: {question}\nAnswer:"))]
    return render_interleaved(*render_parts(parts, vocab), vocab)[0][:-1]
