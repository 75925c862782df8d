"""The offline real-speech evaluation sets: number spelling, the Asterisk prompts' selection and audio."""
import soundfile as sf

from megaspeech.speech.asr import wer
from megaspeech.speech.real_speech import asterisk, asterisk_entries, librivox, spell_numbers


def test_spell_numbers():
    assert spell_numbers("press 1 or 25, then 100 and 2024.").split() == \
        "press one or twenty five , then one hundred and two thousand twenty four .".split()
    assert spell_numbers("no digits here") == "no digits here"
    # Whisper's "press 1" scores as the transcript's "press one" once both sides are spelt
    assert wer(["Press one to mute."], [spell_numbers("Press 1 to mute.")]) == 0.0


def test_asterisk_prompts_selected_and_spelt():
    entries = asterisk_entries()
    by_key = {p.stem: t for p, t in entries}
    assert by_key["all-circuits-busy-now"] == "All circuits are busy now."
    assert by_key["conf-adminmenu-162"].startswith("Please press  one  to mute or unmute yourself,  two  to lock")
    assert "beep" not in by_key and "ascending-2tone" not in by_key  # tones: "[...]" descriptions
    assert "cancelled" not in by_key  # one word: below min_words=3
    for p, t in entries:
        assert not any(c.isdigit() for c in t) and "[" not in t, (p, t)
        assert len(t.split()) >= 3 and sf.info(str(p)).duration <= 30.0, (p, t)
    assert len(asterisk_entries(min_words=1)) > len(entries) > 200


def test_asterisk_audio_is_resampled_to_16k():
    (audio, text), = asterisk(limit=1)
    path, text0 = asterisk_entries()[0]
    info = sf.info(str(path))
    assert info.samplerate == 8000 and text == text0
    assert abs(len(audio) - 2 * info.frames) <= 2 and audio.dtype.name == "float32"


def test_librivox_set():
    items = librivox()
    assert len(items) == 5 and sum(len(t.split()) for _, t in items) == 71
    assert all(a.ndim == 1 and len(a) > 16000 for a, _ in items)
