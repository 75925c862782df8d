"""Offline TTS voices for synthetic training speech: hibari (neural, 24 kHz), espeak-ng and flite
(formant / diphone, many accents). Every voice returns 16 kHz float32 mono audio."""
from __future__ import annotations

import os
import subprocess
import tempfile
from functools import lru_cache

import numpy as np

from megaspeech.speech.audio import decode_audio, resample

# the first, hand-picked set ("classic"); voice_set="all" adds every English accent x every variant
ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
                 "en-gb-x-gbcwmd", "en-us+f2", "en-us+f4", "en-gb+m3", "en-us+klatt", "en-gb+f3")
FLITE_VOICES = ("slt", "rms", "awb", "kal16")
FLITE_ALL = ("slt", "rms", "awb", "kal16", "kal")  # awb_time is a talking clock (time phrases only)
HIBARI_VOICES = ("heart",)  # the voice bundled in the wheel (others would download)
# espeak-ng variants no training voice uses, in any accent: the evaluation suite's voices
# (megaspeech.eval) read held-out text with them, so its speech is from timbres never heard
EVAL_VARIANTS = ("m7", "f5")


class TTSError(RuntimeError):
    pass


_hibari = None


def _hibari_engine(threads: int = 1):
    global _hibari
    if _hibari is None:
        try:
            from hibari import Hibari
        except ImportError:
            raise TTSError("hibari voice needs `pip install hibari-tts`") from None
        _hibari = Hibari(voice="heart", threads=threads)
    return _hibari


def _espeak_list(arg: str) -> list[list[str]]:
    r = subprocess.run(["espeak-ng", f"--voices={arg}"], capture_output=True, text=True)
    if r.returncode:
        raise TTSError(f"espeak-ng --voices={arg} failed ({r.stderr[:200]}); apt-get install espeak-ng")
    return [line.split() for line in r.stdout.splitlines()[1:] if line.strip()]


@lru_cache(maxsize=1)
def espeak_accents() -> tuple[str, ...]:
    """English espeak-ng voices (accents) installed; MBROLA ones (mb/) need extra voice data: left out."""
    return tuple(sorted({row[1] for row in _espeak_list("en") if not row[4].startswith(("mb/", "!v/"))}))


@lru_cache(maxsize=1)
def espeak_variants() -> tuple[str, ...]:
    """Every installed espeak-ng voice variant (`-v <accent>+<variant>`: timbre, pitch, klatt, whisper...)."""
    return tuple(sorted(row[4].split("/", 1)[1] for row in _espeak_list("variant") if row[4].startswith("!v/")))


def synthesize(text: str, voice: str, speed: float = 1.0, seed: int = 0, pitch: float = 1.0) -> np.ndarray:
    """text -> 16 kHz float32 [n]. voice: 'hibari:heart', 'espeak:<accent>[+variant]' or 'flite:<name>'.
    pitch scales espeak-ng's base pitch (-p, 50 = its default); the other engines ignore it."""
    engine, _, name = voice.partition(":")
    if engine == "hibari":
        a = _hibari_engine()(text, speed=speed, seed=seed)
        return resample(np.asarray(a, dtype=np.float32), 24000)
    if engine == "espeak":
        cmd = ["espeak-ng", "-v", name, "-s", str(int(165 * speed)), "-p", str(min(99, max(0, round(50 * pitch)))),
               "--stdout", text]
        r = subprocess.run(cmd, capture_output=True)
        if r.returncode or not r.stdout:
            raise TTSError(f"espeak-ng -v {name} failed ({r.stderr.decode()[:200]}); apt-get install espeak-ng")
        return decode_audio(r.stdout, f"espeak:{name}")
    if engine == "flite":
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "x.wav")
            stretch = f"{1.0 / speed:.3f}"
            r = subprocess.run(["flite", "-voice", name, "--setf", f"duration_stretch={stretch}", "-t", text,
                                "-o", out], capture_output=True)
            if r.returncode or not os.path.exists(out):
                raise TTSError(f"flite -voice {name} failed ({r.stderr.decode()[:200]}); apt-get install flite")
            return decode_audio(out)
    raise TTSError(f"unknown voice {voice!r}; use hibari:heart, espeak:<voice> or flite:<voice>")


def all_voices(voice_set: str = "classic") -> list[str]:
    """classic: the 17 first voices; all: hibari + every English espeak-ng accent alone and with every
    variant but EVAL_VARIANTS (8 x (1 + 99) installed here) + every general flite voice."""
    if voice_set == "classic":
        return ([f"hibari:{v}" for v in HIBARI_VOICES] + [f"espeak:{v}" for v in ESPEAK_VOICES]
                + [f"flite:{v}" for v in FLITE_VOICES])
    if voice_set != "all":
        raise ValueError(f"voice_set={voice_set!r}: use 'classic' or 'all'")
    return ([f"hibari:{v}" for v in HIBARI_VOICES]
            + [f"espeak:{a}{v}" for a in espeak_accents() for v in ("",) + tuple(f"+{x}" for x in espeak_variants()
                                                                                 if x not in EVAL_VARIANTS)]
            + [f"flite:{v}" for v in FLITE_ALL])


def training_voices() -> set[str]:
    """Every voice any training voice set uses (the evaluation suite refuses these)."""
    return set(all_voices("classic")) | set(all_voices("all"))
