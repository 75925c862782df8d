"""Real held-out speech: the LibriVox utterances of pocketsphinx-testdata, with their transcripts."""
from __future__ import annotations

from pathlib import Path

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
