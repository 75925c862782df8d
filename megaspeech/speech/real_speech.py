"""Real human speech with transcripts that installs offline: held-out evaluation sets, never training data.

- LibriVox (`apt-get install pocketsphinx-testdata`): 5 read utterances of Sense and Sensibility, 16 kHz,
  several speakers' book reading, 71 words.
- Asterisk (`apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en`): the Asterisk PBX's
  English prompts, recorded by one professional voice (Allison Smith, CC-BY-SA-3.0) at 8 kHz telephone
  band, with the transcripts of `core-sounds-en.txt`. Prompts of at least `min_words` words (default 3;
  the tones, `[...]` descriptions, files without a transcript and the few over Whisper's 30 s are left out).

Each set is a list of (16 kHz float32 audio, transcript). Transcripts that spell a number in digits are
scored after `spell_numbers` on both sides (Whisper writes "press 1" or "press one" as it likes).

Dev/test split (every caller names one): an utterance belongs to `dev` when the first 8 hex digits of
sha256(<file stem>) are even, else to `test` (`split_of`). The rule reads one file name only, so the split
of an utterance never changes when the selection around it does (min_words, limit). Choose and tune on
dev, report on test. With the Debian packages: LibriVox dev 1 utterance (22 words), test 4 (49 words);
Asterisk (>= 3 words, <= 30 s) dev 124 prompts, test 155.
"""
from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import numpy as np

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
ASTERISK_AUDIO = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")

SPLITS = ("dev", "test")
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "- - twenty thirty forty fifty sixty seventy eighty ninety".split()


def _words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + _words(n % 100))
    if n < 1_000_000:
        return _words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + _words(n % 1000))
    return " ".join(_ONES[int(d)] for d in str(n))


def spell_numbers(text: str) -> str:
    """Every run of digits as English words ("press 1 or 25" -> "press one or twenty five")."""
    return re.sub(r"\d+", lambda m: f" {_words(int(m.group()))} ", text)


def split_of(stem: str) -> str:
    """'dev' or 'test': the fixed split of the utterance in file <stem>.wav (module docstring)."""
    return "dev" if int(hashlib.sha256(stem.encode()).hexdigest()[:8], 16) % 2 == 0 else "test"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use 'dev' (choosing and tuning) or 'test' (reported figures)")


def librivox_entries(split: str) -> list[tuple[Path, str]]:
    """(wav path, transcript) of the `split` half of the 5 LibriVox utterances, in the transcript's order."""
    _check_split(split)
    trans = LIBRIVOX / "transcription"
    if not trans.is_file():
        raise FileNotFoundError(f"{trans} missing: `apt-get install pocketsphinx-testdata`")
    out = []
    for line in trans.read_text().splitlines():
        text, _, key = line.rpartition("(")
        key = key.strip(") ")
        if split_of(key) == split:
            out.append((LIBRIVOX / f"{key}.wav", text.replace("<s>", "").replace("</s>", "").strip()))
    return out


def librivox(split: str) -> list[tuple[np.ndarray, str]]:
    """The `split` ('dev' or 'test') LibriVox utterances of pocketsphinx-testdata (16 kHz)."""
    from megaspeech.speech.audio import decode_audio
    return [(decode_audio(p), t) for p, t in librivox_entries(split)]


def asterisk_entries(split: str | None, min_words: int = 3, max_seconds: float = 30.0) -> list[tuple[Path, str]]:
    """(wav path, transcript with numbers spelt) of the Asterisk English prompts of `split` ('dev',
    'test'; None: both, for inspecting the selection) with >= min_words words and at most max_seconds
    long (Whisper's window)."""
    import soundfile as sf
    if split is not None:
        _check_split(split)
    if not ASTERISK_TEXT.is_file() or not ASTERISK_AUDIO.is_dir():
        raise FileNotFoundError(f"{ASTERISK_TEXT} or {ASTERISK_AUDIO} missing: "
                                "`apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en`")
    out = []
    for line in gzip.decompress(ASTERISK_TEXT.read_bytes()).decode("utf-8").splitlines():
        key, sep, text = line.partition(":")
        if not sep or line.startswith(";") or "[" in text:
            continue
        text = spell_numbers(text).strip()
        wav = ASTERISK_AUDIO / f"{key.strip()}.wav"
        if split is not None and split_of(wav.stem) != split:
            continue
        if wav.is_file() and len(text.split()) >= min_words and sf.info(str(wav)).duration <= max_seconds:
            out.append((wav, text))
    return out


def asterisk(split: str, min_words: int = 3, limit: int | None = None) -> list[tuple[np.ndarray, str]]:
    """The first `limit` Asterisk prompts of `split` ('dev' or 'test') as 16 kHz audio (resampled from
    8 kHz), in the transcript file's order."""
    from megaspeech.speech.audio import decode_audio
    _check_split(split)
    return [(decode_audio(p), t) for p, t in asterisk_entries(split, min_words)[:limit]]

