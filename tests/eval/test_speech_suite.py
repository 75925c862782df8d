"""The spoken directions end to end on a fresh random speech tokenizer (no trained one exists here):
held-out sentences read by unseen TTS voices -> speech codes -> S->S / S->T / T->S story items, S->S
word items, S->T QA, ASR and TTS WER; every row has its item count, and a second run reuses the
cached codes (nothing synthesized twice), also from another out_dir through speech_cache. The
prompts' layout is tested against packing in test_prompts.py."""
from __future__ import annotations

import dataclasses
import json

import pytest

from megaspeech.config.load import ConfigError
from megaspeech.eval.lm import load_lm
from megaspeech.eval.run import PASSAGE_QA, TTS_READER, Context, evaluate
from tests.helpers.suite import suite_cfg


@pytest.fixture(scope="module")
def speech_tok(tmp_path_factory):
    from megaspeech.speech.tokenizer import TokenizerConfig, build_tokenizer, save_tokenizer
    from megaspeech.speech.whisper_ct2 import load_whisper
    d = tmp_path_factory.mktemp("spk")
    w = load_whisper(cache_dir=d / "whisper")
    cfg = TokenizerConfig(split_layer=2, codebook_size=4096)  # = vocab.speech_size of the test models
    model, _ = build_tokenizer(cfg, w)
    save_tokenizer(d / "tok", model, cfg, w)
    return d / "tok"


def test_spoken_directions(planted, docs_dir, speech_tok, tmp_path):
    cfg = suite_cfg(docs_dir, speech_tokenizer=str(speech_tok), story_items=3,
                    story_directions=["T->T", "S->T", "T->S", "S->S"], word_items=3, qa_items=2, asr_items=2,
                    tts_items=2)
    res = evaluate(cfg, planted[0], tmp_path, log=lambda m: None)
    got = {(r["task"], r["direction"], r["metric"]): r["n"] for r in res["results"] if "n" in r}
    for d in ("T->T", "S->T", "T->S", "S->S"):
        assert got[("story (easy: other document)", d, "accuracy")] == 3
        assert got[("story (hard: same document)", d, "accuracy")] == 3
    assert got[("word vs non-word", "S->S", "accuracy")] == 3
    assert got[(PASSAGE_QA, "S->T", "exact match")] == 2 and got[(PASSAGE_QA, "T->T", "token F1")] == 2
    assert got[("ASR", "S->T", "WER")] == 2 and got[(TTS_READER, "T->S", "WER")] == 2
    # TTS: no speech_decoder here; the n-gram contamination check: no training_manifests here
    assert not any(r.get("skipped") for r in res["results"] if r["task"] != "TTS" and r["direction"] != "-")
    keys = json.loads((tmp_path / "speech_codes.json").read_text())
    assert keys and all(k.split("|")[1] in cfg.voices for k in keys)
    # the same suite again: every code comes from the cache; another model's evaluation into another
    # out_dir reads it too when speech_cache points there (the pipeline's variants share one)
    requests = [tuple(k.split("|", 2)[:0:-1]) for k in keys]  # (text, voice)
    for c, out in ((cfg, tmp_path), (dataclasses.replace(cfg, speech_cache=str(tmp_path)), tmp_path / "other")):
        ctx = Context(c, load_lm(planted[1]), out)
        ctx.need_speech(requests)
        assert ctx.speech.synthesized == 0


def test_training_voice_refused(planted, docs_dir, speech_tok, tmp_path):
    cfg = suite_cfg(docs_dir, speech_tokenizer=str(speech_tok), voices=["espeak:en-us"])
    with pytest.raises(ConfigError, match="voices: espeak:en-us is a voice training speech uses"):
        evaluate(cfg, planted[1], tmp_path, log=lambda m: None)
