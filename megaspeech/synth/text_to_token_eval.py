"""Quality of a text-to-token model: WER of its generated codes read back by the speech tokenizer's
ASR path (megaspeech.speech.tokenizer.decode_tokens_to_text), on held-out transcripts.

The paper reports WER 3.20 on VCTK for its text-to-token model; here the held-out set is any dataset
with transcripts: `speech` shards (transcript = decoded `text` ids) or `audio` shards (`transcript`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from megaspeech.data.shards import Dataset
from megaspeech.data.text import TextTokenizer
from megaspeech.speech.asr import wer
from megaspeech.synth.generate import SpeechGenerator


def heldout_transcripts(path: str | Path, tok: TextTokenizer, limit: int) -> list[str]:
    """Up to `limit` reference transcripts of a `speech` (with text) or `audio` dataset."""
    ds = Dataset(path)
    out = []
    for key, s in ds:
        if ds.kind == "speech" and "text" in s:
            out.append(tok.decode(s["text"]))
        elif ds.kind == "audio" and s.get("transcript"):
            out.append(s["transcript"])
        else:
            raise ValueError(f"{path} key {key}: no transcript (need `speech` shards with `text` or `audio` with "
                             f"`transcript`)")
        if len(out) == limit:
            break
    return out


def read_codes(speech_tokenizer: str | Path, codes: list[np.ndarray], references: list[str],
               batch: int = 16) -> list[str]:
    """Transcripts of generated speech codes through the speech tokenizer's own Whisper decoder (no
    vocoder), `batch` utterances at a time; the decoding cap of a batch follows its references' length."""
    from megaspeech.speech.tokenizer import decode_tokens_to_text, load_tokenizer
    model, whisper, _ = load_tokenizer(speech_tokenizer)
    hyps = []
    for i in range(0, len(codes), batch):
        chunk = [c if len(c) else np.zeros(1, np.int64) for c in codes[i:i + batch]]
        # a transcript needs ~1.3 Whisper tokens per word: cap decoding well above that
        cap = 3 * max(len(r.split()) for r in references[i:i + batch]) + 16
        hyps += decode_tokens_to_text(model, whisper, chunk, max_new_tokens=cap)
    return hyps


def generated_wer(gen: SpeechGenerator, tok: TextTokenizer, speech_tokenizer: str | Path,
                  references: list[str], batch: int = 16) -> dict:
    """Generate codes for each reference transcript, transcribe them through the speech tokenizer and
    score: {"wer": percent, "utterances", "codes_per_word", "examples": [(ref, hyp)] x 3}."""
    ids = [tok.encode(r) for r in references]
    codes = gen.generate(ids, [max(1, len(r.split())) for r in references])
    hyps = read_codes(speech_tokenizer, codes, references, batch)
    n_words = sum(len(r.split()) for r in references)
    return {"wer": wer(references, hyps), "utterances": len(references),
            "codes_per_word": sum(len(c) for c in codes) / max(n_words, 1),
            "examples": list(zip(references[:3], hyps[:3]))}
