"""The `audio` shard kind: audio + transcript samples in the project's one shard format.

    audio.flac  bytes  16 kHz mono FLAC (any soundfile format is accepted on read)
    transcript  str    optional: what is said (training targets / WER references)
    duration    float  seconds
    source      str    where it came from (TTS voice + text source, or the input file)

megaspeech.data.shards knows text/speech/interleaved; `register_audio_kind()` adds `audio` to
its tables (idempotent) until the data module lists it natively.
"""
from __future__ import annotations

import sys

from megaspeech.data import shards

AUDIO_FIELD = "audio.flac"


def register_audio_kind() -> None:
    """Add `audio` to the kind tables of megaspeech.data's shard modules (shared dicts are
    extended in place; the KINDS tuple is rebound wherever a module imported it)."""
    shards.REQUIRED.setdefault("audio", (AUDIO_FIELD,))
    shards.TOKEN_FIELDS.setdefault("audio", ())
    for name, mod in list(sys.modules.items()):
        if name.startswith("megaspeech.data.") and "audio" not in getattr(mod, "KINDS", ("audio",)):
            mod.KINDS = tuple(mod.KINDS) + ("audio",)


def audio_bytes(sample: dict, where: str) -> bytes:
    """The encoded audio of an `audio` sample (audio.flac, or another extension soundfile reads)."""
    for k, v in sample.items():
        if k.startswith("audio.") and isinstance(v, bytes):
            return v
    raise shards.ShardError(f"{where}: no audio.<ext> bytes field; write samples with 'audio.flac'")


register_audio_kind()
