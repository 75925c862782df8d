"""The spoken directions end to end on a fresh random speech tokenizer (no trained one exists here):
held-out sentences read by unseen TTS voices -> speech codes -> S->S / S->T / T->S story items, S->S
word items, S->T QA, ASR and TTS WER; every row has its item count, and a second run reuses the
cached codes (nothing synthesized twice), also from another out_dir through speech_cache."""
from __future__ import annotations

import dataclasses
import json

import pytest

from megaspeech.config.load import ConfigError
from megaspeech.eval.lm import load_lm
from megaspeech.eval.run import Context, evaluate
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
    assert got[("spoken QA", "S->T", "exact match")] == 2 and got[("spoken QA", "T->T", "token F1")] == 2
    assert got[("ASR", "S->T", "WER")] == 2 and got[("TTS", "T->S", "WER")] == 2
    assert not any(r.get("skipped") for r in res["results"])
    keys = json.loads((tmp_path / "speech_codes.json").read_text())
    assert keys and all(k.split("|")[1] in cfg.voices for k in keys)
    # the same suite again: every code comes from the cache; another model's evaluation into another
    # out_dir reads it too when speech_cache points there (the pipeline's variants share one)
    texts = [k.split("|", 2)[2] for k in keys]
    for c, out in ((cfg, tmp_path), (dataclasses.replace(cfg, speech_cache=str(tmp_path)), tmp_path / "other")):
        ctx = Context(c, load_lm(planted[1]), out)
        ctx.need_speech(texts)
        assert ctx.speech.synthesized == 0


def test_training_voice_refused(planted, docs_dir, speech_tok, tmp_path):
    cfg = suite_cfg(docs_dir, speech_tokenizer=str(speech_tok), voices=["espeak:en-us"])
    with pytest.raises(ConfigError, match="voices: espeak:en-us is a voice training speech uses"):
        evaluate(cfg, planted[1], tmp_path, log=lambda m: None)


def test_qa_prompt_formats(planted, docs_dir, speech_tok, tmp_path):
    """chat: <|user|> passage question <|assistant|>; plain (a base model): <|bos|> passage
    "\nQuestion:" question "\nAnswer:", with passage and question spoken for S->T."""
    import numpy as np

    from megaspeech.eval.run import qa_prompt, spoken
    it = {"passage": "The budget was balanced. Taxes were cut.", "question": "Which word fills the blank: \"Taxes were ___\"?"}
    lm = load_lm(planted[0])
    v = lm.vocab
    for fmt in ("chat", "plain"):
        ctx = Context(suite_cfg(docs_dir, speech_tokenizer=str(speech_tok), qa_prompt=fmt), lm, tmp_path)
        ctx.need_speech([it["passage"], spoken(it["question"])])
        tt, st = qa_prompt(ctx, it, "T"), qa_prompt(ctx, it, "S")
        enc, sp = ctx.tok.encode, ctx.span
        if fmt == "chat":
            want_t = [[v.special("<|user|>")], enc(it["passage"]), enc(" " + it["question"]), [v.special("<|assistant|>")]]
            want_s = [[v.special("<|user|>")], sp(it["passage"], "S"), sp(spoken(it["question"]), "S"), [v.special("<|assistant|>")]]
        else:
            want_t = [[v.bos_id], enc(it["passage"]), enc("\nQuestion: " + it["question"]), enc("\nAnswer:")]
            want_s = [[v.bos_id], sp(it["passage"], "S"), enc("\nQuestion:"), sp(spoken(it["question"]), "S"), enc("\nAnswer:")]
        np.testing.assert_array_equal(tt, np.concatenate(want_t))
        np.testing.assert_array_equal(st, np.concatenate(want_s))
        assert (v.special("<|user|>") in tt) == (fmt == "chat")
