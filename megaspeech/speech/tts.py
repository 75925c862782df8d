"""Offline TTS voices for synthetic training speech: hibari (neural, 24 kHz), espeak-ng and flite
(formant / diphone, many accents). Every voice returns 16 kHz float32 mono audio."""
from __future__ import annotations

import io
import os
import subprocess
import tempfile

import numpy as np

from megaspeech.speech.audio import decode_audio, resample

ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
                 "en-gb-x-gbcwmd", "en-us+f2", "en-us+f4", "en-gb+m3", "en-us+klatt", "en-gb+f3")
FLITE_VOICES = ("slt", "rms", "awb", "kal16")
HIBARI_VOICES = ("heart",)  # the voice bundled in the wheel (others would download)


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


def synthesize(text: str, voice: str, speed: float = 1.0, seed: int = 0) -> np.ndarray:
    """text -> 16 kHz float32 [n]. voice: 'hibari:heart', 'espeak:<name>' or 'flite:<name>'."""
    engine, _, name = voice.partition(":")
    if engine == "hibari":
        a = _hibari_engine()(text, speed=speed, seed=seed)
        return resample(np.asarray(a, dtype=np.float32), 24000)
    if engine == "espeak":
        cmd = ["espeak-ng", "-v", name, "-s", str(int(165 * speed)), "--stdout", text]
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


def all_voices() -> list[str]:
    return ([f"hibari:{v}" for v in HIBARI_VOICES] + [f"espeak:{v}" for v in ESPEAK_VOICES]
            + [f"flite:{v}" for v in FLITE_VOICES])
