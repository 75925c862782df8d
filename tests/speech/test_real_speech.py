"""The offline real-speech evaluation sets: number spelling, the Asterisk prompts' selection and audio,
the dev/test splits."""
import hashlib

import pytest
import soundfile as sf

from megaspeech.speech.asr import wer
from megaspeech.speech.real_speech import (LIBRIVOX, asterisk, asterisk_entries, librivox, librivox_entries,
                                           spell_numbers, split_of)


def test_spell_numbers():
    assert spell_numbers("press 1 or 25, then 100 and 2024.").split() == \
        "press one or twenty five , then one hundred and two thousand twenty four .".split()
    assert spell_numbers("no digits here") == "no digits here"
    # Whisper's "press 1" scores as the transcript's "press one" once both sides are spelt
    assert wer(["Press one to mute."], [spell_numbers("Press 1 to mute.")]) == 0.0


def test_asterisk_prompts_selected_and_spelt():
    entries = asterisk_entries(None)
    by_key = {p.stem: t for p, t in entries}
    assert by_key["all-circuits-busy-now"] == "All circuits are busy now."
    assert by_key["conf-adminmenu-162"].startswith("Please press  one  to mute or unmute yourself,  two  to lock")
    assert "beep" not in by_key and "ascending-2tone" not in by_key  # tones: "[...]" descriptions
    assert "cancelled" not in by_key  # one word: below min_words=3
    for p, t in entries:
        assert not any(c.isdigit() for c in t) and "[" not in t, (p, t)
        assert len(t.split()) >= 3 and sf.info(str(p)).duration <= 30.0, (p, t)
    assert len(asterisk_entries(None, min_words=1)) > len(entries) > 200


def test_asterisk_audio_is_resampled_to_16k():
    (audio, text), = asterisk("test", limit=1)
    path, text0 = asterisk_entries("test")[0]
    info = sf.info(str(path))
    assert info.samplerate == 8000 and text == text0
    assert abs(len(audio) - 2 * info.frames) <= 2 and audio.dtype.name == "float32"


def test_librivox_set():
    items = librivox("dev") + librivox("test")
    assert len(items) == 5 and sum(len(t.split()) for _, t in items) == 71
    assert all(a.ndim == 1 and len(a) > 16000 for a, _ in items)


def _rule(stem: str) -> str:  # the documented rule, written out again: sha256 of the file stem, 8 hex digits
    return ["dev", "test"][int(hashlib.sha256(stem.encode()).hexdigest()[:8], 16) % 2]


def test_dev_test_splits_are_disjoint_cover_each_set_and_are_stable():
    stems = [line.rpartition("(")[2].strip(") ") for line in (LIBRIVOX / "transcription").read_text().splitlines()]
    for every, dev, test in ((asterisk_entries(None), asterisk_entries("dev"), asterisk_entries("test")),
                             ([(LIBRIVOX / f"{k}.wav", None) for k in stems], librivox_entries("dev"),
                              librivox_entries("test"))):
        d, t = {p.stem for p, _ in dev}, {p.stem for p, _ in test}
        assert d and t and not d & t and d | t == {p.stem for p, _ in every}
        assert all(split_of(s) == _rule(s) == "dev" for s in d) and all(_rule(s) == "test" for s in t)
        # each half keeps the transcript file's order
        assert [p.stem for p, _ in every if p.stem in d] == [p.stem for p, _ in dev]
    # the counts the docs quote (docs/speech_tokenizer.md), derived from the installed files
    assert [len(librivox_entries(s)) for s in ("dev", "test")] == [1, 4]
    assert [sum(len(t.split()) for _, t in librivox_entries(s)) for s in ("dev", "test")] == [22, 49]
    assert [len(asterisk_entries(s)) for s in ("dev", "test")] == [124, 155]
    # the split of a prompt does not depend on the selection around it
    assert {p.stem for p, _ in asterisk_entries("test", min_words=1)} >= {p.stem for p, _ in asterisk_entries("test")}
    with pytest.raises(ValueError, match="split='train'"):
        librivox("train")
