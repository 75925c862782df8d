"""Shared fixtures: the converted Whisper tiny.en (converted once per session into a temp cache)
and the held-out LibriVox utterances of pocketsphinx-testdata (real human speech)."""
from pathlib import Path

import pytest

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def librivox_items() -> list[tuple[Path, str]]:
    """[(wav path, transcript)] from `apt-get install pocketsphinx-testdata`; fails (never skips) without it."""
    trans = LIBRIVOX / "transcription"
    assert trans.is_file(), f"{trans} missing: `apt-get install pocketsphinx-testdata` (CI installs it)"
    items = []
    for line in trans.read_text().splitlines():
        text, _, key = line.rpartition("(")
        text = text.replace("<s>", "").replace("</s>", "").strip()
        items.append((LIBRIVOX / f"{key.strip(') ')}.wav", text))
    return items


@pytest.fixture(scope="session")
def whisper_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("whisper") / "tiny.en"


@pytest.fixture(scope="session")
def whisper(whisper_cache):
    from megaspeech.speech.whisper_ct2 import load_whisper
    return load_whisper(cache_dir=whisper_cache)
