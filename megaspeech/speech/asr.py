"""Greedy Whisper decoding over any encoder output (the plain encoder or the VQ tokenizer's).

The transformers Whisper decoder ignores cross-attention masks, so a batch of encoder outputs
of different lengths (12.5 Hz token sequences) is decoded by running its layers here with an
explicit key-padding mask. Decoding follows faster-whisper's greedy path: prompt
[sot, no_timestamps], the model's suppress list at every step, blank/eot suppressed at the
first step, stop at eot.
"""
from __future__ import annotations

import re

import numpy as np
import torch

from megaspeech.speech.audio import log_mel


def additive_mask(keep: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """bool [B, S] (True = real) -> additive attention mask [B, 1, 1, S] (0 or -inf-ish)."""
    m = torch.zeros(keep.shape, dtype=dtype)
    m.masked_fill_(~keep, torch.finfo(dtype).min)
    return m[:, None, None, :]


def run_decoder(decoder, ids: torch.Tensor, enc: torch.Tensor, enc_keep: torch.Tensor | None = None) -> torch.Tensor:
    """Whisper decoder stack. ids int64 [B, T], enc float [B, S, D], enc_keep bool [B, S] -> hidden [B, T, D]."""
    T = ids.shape[1]
    x = decoder.embed_tokens(ids) * getattr(decoder, "embed_scale", 1.0) + decoder.embed_positions.weight[:T]
    causal = torch.full((T, T), torch.finfo(x.dtype).min, dtype=x.dtype).triu(1)[None, None]
    cross = None if enc_keep is None else additive_mask(enc_keep, x.dtype)
    for layer in decoder.layers:
        x = layer(x, causal, enc, encoder_attention_mask=cross, use_cache=False)
    return decoder.layer_norm(x)


@torch.no_grad()
def greedy_decode(whisper, enc: torch.Tensor, enc_keep: torch.Tensor | None = None,
                  max_new_tokens: int = 200) -> list[list[int]]:
    """Greedy transcription of a batch of encoder outputs. enc float [B, S, D] -> token ids per item (no specials)."""
    model, meta = whisper.model, whisper.meta
    decoder, proj = model.model.decoder, model.proj_out
    B = enc.shape[0]
    ids = torch.tensor([whisper.prompt] * B, dtype=torch.long)
    suppress = torch.tensor(meta["suppress"], dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    max_pos = decoder.embed_positions.weight.shape[0]
    for step in range(min(max_new_tokens, max_pos - ids.shape[1])):
        logits = proj(run_decoder(decoder, ids, enc, enc_keep)[:, -1]).float()
        logits[:, suppress] = -float("inf")
        if step == 0:  # faster-whisper's suppress_blank: no empty transcript, no leading blank
            logits[:, [meta["blank"], meta["eot"]]] = -float("inf")
        nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, meta["eot"]), nxt)
        ids = torch.cat([ids, nxt[:, None]], 1)
        done |= nxt == meta["eot"]
        if done.all():
            break
    out = []
    for row in ids[:, len(whisper.prompt):].tolist():
        out.append(row[:row.index(meta["eot"])] if meta["eot"] in row else row)
    return out


@torch.no_grad()
def transcribe_base(whisper, audios: list[np.ndarray]) -> list[str]:
    """Unquantized Whisper (30 s padded encoder, as trained) -> text per 16 kHz utterance."""
    feats = torch.from_numpy(np.stack([log_mel(a) for a in audios]))
    enc = whisper.model.model.encoder(feats).last_hidden_state
    return [whisper.decode_text(t) for t in greedy_decode(whisper, enc)]


def normalize_text(text: str) -> list[str]:
    """Lowercase words without punctuation, for WER (apostrophes kept inside words)."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return [w.strip("'") for w in text.split() if w.strip("'")]


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(edit distance in words, reference word count) after normalize_text."""
    r, h = normalize_text(ref), normalize_text(hyp)
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(h)], len(r)


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus WER in percent: total word edits / total reference words."""
    e = n = 0
    for r, h in zip(refs, hyps):
        de, dn = word_errors(r, h)
        e, n = e + de, n + dn
    return 100.0 * e / max(n, 1)
