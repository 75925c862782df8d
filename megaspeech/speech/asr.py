"""Greedy Whisper decoding over any encoder output (the plain encoder or the VQ tokenizer's).

The transformers Whisper decoder ignores cross-attention masks, so a batch of encoder outputs
of different lengths (12.5 Hz token sequences) is decoded by running its layers here with an
explicit key-padding mask. Decoding follows faster-whisper's greedy path: prompt
[sot, no_timestamps], the model's suppress list at every step, blank/eot suppressed at the
first step, stop at eot.

`transcribe_tokens` adds Whisper's temperature fallback (faster-whisper's and openai-whisper's
transcribe defaults): an utterance whose greedy text is too repetitive (gzip compression ratio >
2.4: the decoder looping) or too unlikely (mean log-probability < -1) is decoded again by sampling
at temperature 0.2, 0.4, ... 1.0, best of 5 by mean log-probability, until one passes; if none
does, the most likely of those under the compression threshold (else of all) is kept. Sampling
draws from a generator seeded per call, so a batch always gives the same text.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from megaspeech.model.hf import cache_kwargs
from megaspeech.speech.audio import log_mel


def additive_mask(keep: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """bool [B, S] (True = real) -> additive attention mask [B, 1, 1, S] (0 or -inf-ish)."""
    m = torch.zeros(keep.shape, dtype=dtype)
    m.masked_fill_(~keep, torch.finfo(dtype).min)
    return m[:, None, None, :]


def run_decoder(decoder, ids: torch.Tensor, enc: torch.Tensor, enc_keep: torch.Tensor | None = None,
                cache: EncoderDecoderCache | None = None) -> torch.Tensor:
    """Whisper decoder stack. ids int64 [B, T], enc float [B, S, D], enc_keep bool [B, S] -> hidden [B, T, D].
    With a `cache` (transformers' EncoderDecoderCache) ids are the tokens after those it holds: their
    keys and values are added to it, and the encoder's are computed once."""
    past = cache.get_seq_length() if cache is not None else 0
    T = ids.shape[1]
    x = decoder.embed_tokens(ids) * getattr(decoder, "embed_scale", 1.0) + decoder.embed_positions.weight[past:past + T]
    causal = torch.full((T, past + T), torch.finfo(x.dtype).min, dtype=x.dtype).triu(past + 1)[None, None]
    cross = None if enc_keep is None else additive_mask(enc_keep, x.dtype)
    kw = cache_kwargs(decoder.layers[0], cache)
    for layer in decoder.layers:
        x = layer(x, causal, enc, encoder_attention_mask=cross, use_cache=cache is not None, **kw)
    return decoder.layer_norm(x)


@torch.no_grad()
def decode(whisper, enc: torch.Tensor, enc_keep: torch.Tensor | None = None, max_new_tokens: int = 200,
           temperature: float = 0.0, generators: list[torch.Generator] | None = None
           ) -> tuple[list[list[int]], torch.Tensor]:
    """One decoding pass over a batch of encoder outputs enc float [B, S, D]: greedy at temperature 0,
    else sampling from softmax(logits / temperature), row b with generators[b] (so a row's samples do not
    depend on the rest of the batch). -> (token ids per item, no specials; the mean log-probability per
    item, float [B], of its tokens and the end of text, as Whisper scores them)."""
    model, meta = whisper.model, whisper.meta
    decoder, proj = model.model.decoder, model.proj_out
    B = enc.shape[0]
    ids = torch.tensor([whisper.prompt] * B, dtype=torch.long)
    suppress = torch.tensor(meta["suppress"], dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    logprob, n = torch.zeros(B), torch.ones(B)
    max_pos = decoder.embed_positions.weight.shape[0]
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    for step in range(min(max_new_tokens, max_pos - ids.shape[1])):
        logits = proj(run_decoder(decoder, ids[:, cache.get_seq_length():], enc, enc_keep, cache)[:, -1]).float()
        logits[:, suppress] = -float("inf")
        if step == 0:  # faster-whisper's suppress_blank: no empty transcript, no leading blank
            logits[:, [meta["blank"], meta["eot"]]] = -float("inf")
        if temperature > 0:
            probs = torch.softmax(logits / temperature, -1)
            nxt = torch.cat([torch.multinomial(probs[b], 1, generator=generators[b]) for b in range(B)])
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, meta["eot"]), nxt)
        lp = torch.log_softmax(logits, -1).gather(1, nxt[:, None])[:, 0]
        logprob += torch.where(done, 0.0, lp)
        ids = torch.cat([ids, nxt[:, None]], 1)
        done |= nxt == meta["eot"]
        n += (~done).float()
        if done.all():
            break
    out = []
    for row in ids[:, len(whisper.prompt):].tolist():
        out.append(row[:row.index(meta["eot"])] if meta["eot"] in row else row)
    return out, logprob / n


def greedy_decode(whisper, enc: torch.Tensor, enc_keep: torch.Tensor | None = None,
                  max_new_tokens: int = 200) -> list[list[int]]:
    """Greedy transcription of a batch of encoder outputs. enc float [B, S, D] -> token ids per item (no specials)."""
    return decode(whisper, enc, enc_keep, max_new_tokens)[0]


def compression_ratio(text: str) -> float:
    """Whisper's repetition measure: UTF-8 bytes / zlib-compressed bytes (a looping text compresses well)."""
    b = text.encode("utf-8")
    return len(b) / len(zlib.compress(b))


@dataclass(frozen=True)
class Fallback:
    """Whisper's temperature fallback (faster-whisper's transcribe defaults)."""
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    best_of: int = 5
    seed: int = 0


@torch.no_grad()
def transcribe_tokens(whisper, enc: torch.Tensor, enc_keep: torch.Tensor | None = None,
                      max_new_tokens: int = 200, fallback: Fallback | None = None) -> list[list[int]]:
    """Transcription of a batch of encoder outputs with Whisper's temperature fallback (module doc);
    fallback=None: greedy only. enc float [B, S, D] -> token ids per item (no specials)."""
    if fallback is None:
        return greedy_decode(whisper, enc, enc_keep, max_new_tokens)
    B = enc.shape[0]
    final: list = [None] * B
    tried: list[list] = [[] for _ in range(B)]  # (mean log-prob, below the compression threshold, tokens)
    todo = list(range(B))
    for ti, t in enumerate(fallback.temperatures):
        if not todo:
            break
        k = fallback.best_of if t > 0 else 1
        rows = torch.tensor(todo).repeat_interleave(k)
        # the j-th sample of every item at this temperature has the same seed: an item's transcript does not
        # depend on which other items share its batch (identical audio, identical text)
        gens = [torch.Generator().manual_seed(fallback.seed * 10007 + ti * 101 + j) for _ in todo for j in range(k)]
        toks, lp = decode(whisper, enc[rows], None if enc_keep is None else enc_keep[rows], max_new_tokens, t, gens)
        left = []
        for j, i in enumerate(todo):
            best = max(range(j * k, (j + 1) * k), key=lambda r: float(lp[r]))
            ok_cr = compression_ratio(whisper.decode_text(toks[best]).strip()) <= fallback.compression_ratio_threshold
            tried[i].append((float(lp[best]), ok_cr, toks[best]))
            if ok_cr and float(lp[best]) >= fallback.log_prob_threshold:
                final[i] = toks[best]
            else:
                left.append(i)
        todo = left
    for i in todo:  # every temperature failed
        final[i] = max([r for r in tried[i] if r[1]] or tried[i], key=lambda r: r[0])[2]
    return final


@torch.no_grad()
def transcribe_base(whisper, audios: list[np.ndarray], fallback: Fallback | None = None) -> list[str]:
    """Unquantized Whisper (30 s padded encoder, as trained) -> text per 16 kHz utterance (greedy, or with
    the temperature fallback)."""
    feats = torch.from_numpy(np.stack([log_mel(a) for a in audios]))
    enc = whisper.model.model.encoder(feats).last_hidden_state
    return [whisper.decode_text(t) for t in transcribe_tokens(whisper, enc, fallback=fallback)]


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
