"""GLM-4-Voice mixture weights from the token budget (megaspeech.pipeline.mixture_weights)."""
import math

import pytest

from megaspeech.pipeline.mixture_weights import glm4voice_weights


def test_one_epoch_of_speech_from_the_budget_rest_interleaved():
    w, info = glm4voice_weights(1_000_000, 0.3, {"speech": 50_000, "asr_tts": 150_000}, speech_share_max=0.2)
    assert w == pytest.approx({"text": 0.3, "speech": 0.05, "asr_tts": 0.15, "interleaved": 0.5})
    assert info["expected_epochs"] == pytest.approx({"speech": 1.0, "asr_tts": 1.0})


def test_too_much_speech_is_scaled_to_its_cap_and_interleaved_keeps_the_rest():
    # a small budget: one epoch of speech is 4x the budget; the paper's ~10% is all it gets
    w, info = glm4voice_weights(100_000, 0.3, {"speech": 100_000, "asr_tts": 300_000})
    assert w == pytest.approx({"text": 0.3, "speech": 0.025, "asr_tts": 0.075, "interleaved": 0.6})
    assert info["expected_epochs"]["speech"] == pytest.approx(0.025)
    # with the cap at everything text leaves, speech fills it and nothing is left to interleave
    w, info = glm4voice_weights(100_000, 0.3, {"speech": 100_000, "asr_tts": 300_000}, speech_share_max=0.7)
    assert "interleaved" not in w and math.isclose(sum(w.values()), 1.0)
    assert w["text"] == 0.3 and w["asr_tts"] == pytest.approx(3 * w["speech"])
    assert info["expected_epochs"]["speech"] == pytest.approx(0.175)


@pytest.mark.parametrize("scale,inter", [(0.0, 0.0), (2.0, 1.0 / 1.5)])
def test_ablation_scales_give_interleaved_share_to_text_and_speech(scale, inter):
    w, _ = glm4voice_weights(1_000_000, 0.3, {"speech": 50_000, "asr_tts": 150_000}, scale, speech_share_max=0.2)
    assert w.get("interleaved", 0.0) == pytest.approx(inter) and math.isclose(sum(w.values()), 1.0)
    # text and speech keep their recipe proportions 0.3 : 0.05 : 0.15
    assert w["speech"] / w["text"] == pytest.approx(0.05 / 0.3) and w["asr_tts"] / w["text"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="budget"):
        glm4voice_weights(0, 0.3, {})
