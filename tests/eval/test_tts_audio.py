"""The suite's TTS row is judged on audio: the generated codes go through the speech decoder to a
waveform that Whisper tiny.en transcribes. Planted: a decoder whose every waveform is silence makes
the row's WER ~100% with one transcript for every item (the audio, not the codes, was heard), its
audio as long as the codes say; without a decoder the row is there, skipped with the reason."""
from __future__ import annotations

import json

import pytest

from megaspeech.eval.run import NO_SPEECH, TTS_READER, evaluate
from megaspeech.eval.tts_audio import NO_DECODER
from megaspeech.synth.generate import GenerationConfig
from tests.helpers.decoders import FRAME_RATE, small_decoder
from tests.helpers.heldout_data import VOCAB
from tests.helpers.suite import suite_cfg


@pytest.fixture(scope="module")
def silent_decoder(tmp_path_factory):
    return small_decoder(tmp_path_factory.mktemp("tts") / "silent", VOCAB.speech_size, silent=True)


def rows_of(res: dict) -> dict:
    return {r["task"]: r for r in res["results"] if r["task"].startswith("TTS")}


def test_tts_row_hears_the_decoders_audio(planted, docs_dir, silent_decoder, tmp_path):
    cfg = suite_cfg(docs_dir, story_items=0, tts_items=3, heldout_loss=False, speech_decoder=str(silent_decoder))
    res = evaluate(cfg, planted[1], tmp_path, log=lambda m: None)
    rows = rows_of(res)
    tts = rows["TTS"]
    assert tts["direction"] == "T->S" and tts["metric"] == "WER" and tts["n"] == 3
    assert tts["value"] >= 90 and tts["ci95"][0] <= tts["value"] <= tts["ci95"][1]  # silence names no word
    assert "Whisper tiny.en" in tts["pipeline"] and str(silent_decoder) in tts["pipeline"]
    hyps = [h for _, h in res["examples"]["tts"]]
    # one silence, one transcript (Whisper's filler for silence, at most a word or two), whatever the codes
    assert len(hyps) == 3 and len(set(hyps)) == 1 and len(hyps[0].split()) <= 2
    # the audio is as long as the codes: whole codes of 80 ms, within the generator's length limits
    refs = [r for r, _ in json.loads((tmp_path / "eval.json").read_text())["examples"]["tts"]]
    lims = [GenerationConfig().length_limits(len(r.split())) for r in refs]
    n_codes = tts["audio_seconds"] * FRAME_RATE
    assert n_codes == pytest.approx(round(n_codes))
    assert sum(lo for lo, _ in lims) <= n_codes <= sum(hi for _, hi in lims)
    assert rows[TTS_READER]["skipped"] == NO_SPEECH  # no speech tokenizer: the diagnostic reader cannot run
    assert "TTS | T->S | WER" in (tmp_path / "table.md").read_text()


def test_tts_row_without_a_decoder_is_skipped_with_the_reason(planted, docs_dir, tmp_path):
    cfg = suite_cfg(docs_dir, story_items=0, tts_items=3, heldout_loss=False)
    rows = rows_of(evaluate(cfg, planted[1], tmp_path, log=lambda m: None))
    assert rows["TTS"]["skipped"] == NO_DECODER and rows[TTS_READER]["skipped"] == NO_SPEECH
    assert f"skipped: {NO_DECODER}" in (tmp_path / "table.md").read_text()
