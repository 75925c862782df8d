"""The suite's prompts are training documents (issue 40, point 3): for every task and direction,
prompt + continuation equals what the data tools and packing make of the same content (a text sample,
an interleaved sample from synth.interleave.assemble with word-aligned spans, one speech utterance, a
QA sample from synth.speech_qa.qa_sample, each through data.packing.format_sample); one voice reads
every spoken part of an item; no <|end_of_speech|><|begin_of_speech|> boundary inside one story.
Speech codes: a deterministic stand-in for TTS + tokenizer (one code per word), which the layout
does not depend on; the held-out items are the suite's own (real addresses)."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from megaspeech.config.eval_suite import DEFAULT_VOICES
from megaspeech.data.packing import format_sample
from megaspeech.data.text import TextTokenizer
from megaspeech.eval import tasks
from megaspeech.eval.contamination import heldout_documents
from megaspeech.eval.prompts import qa_prompt, spoken_texts, story_text, two_choice_prompt
from megaspeech.eval.speech import SpeechCodes
from megaspeech.synth.interleave import assemble
from megaspeech.synth.speech_qa import qa_sample
from tests.helpers.heldout_data import VOCAB

V = VOCAB
DIRECTIONS = ("T->T", "S->T", "T->S", "S->S")


def speak(text: str) -> np.ndarray:
    """Codes of a reading: one per word, so a longer text read in one go shares the shorter one's codes."""
    return np.array([zlib.crc32(w.encode()) % V.speech_size for w in text.split()], np.int64)


@pytest.fixture(scope="module")
def material(docs_dir):
    docs = heldout_documents(f"files:{docs_dir}/*.txt", 6)
    stories = [it for hard in (False, True) for it in tasks.story_items(docs, 6, 3, 0, hard)]
    return TextTokenizer(V), stories, tasks.word_items(docs, 6, 0)


def packed(kind: str, sample: dict) -> np.ndarray:
    return format_sample(kind, sample, V, asr=False)[0]


def interleaved_doc(tok, text: str, n_words_before: int, span_first: bool, codes) -> np.ndarray:
    """synth.interleave's document: `text` with the words before (span_first) or from `n_words_before`
    on turned into one speech span, cut at the tokenizer's word starts as plan_document cuts."""
    ids, starts = tok.encode_words(text)
    cut = int(np.flatnonzero(starts)[n_words_before])
    span = (0, cut, n_words_before) if span_first else (cut, len(ids), len(text.split()) - n_words_before)
    return packed("interleaved", assemble(ids, [span], [codes], V))


def test_story_and_word_prompts_are_packed_training_documents(material):
    tok, stories, words = material
    for it in stories:
        ctx, n_ctx = it["context"], len(it["context"].split())
        for d in DIRECTIONS:
            prompt, conts = two_choice_prompt(it, d, V, tok, speak)
            for e, cont in zip(it["endings"], conts):
                got = np.concatenate([prompt, cont])
                full = f"{ctx} {e}"
                want = {"T->T": lambda: packed("text", {"tokens": tok.encode(full)})[:-1],
                        "S->T": lambda: interleaved_doc(tok, full, n_ctx, True, speak(ctx))[:-1],
                        "T->S": lambda: interleaved_doc(tok, full, n_ctx, False, speak(e))[:-1],
                        "S->S": lambda: packed("speech", {"codes": speak(story_text(ctx, e))})}[d]()
                np.testing.assert_array_equal(got, want, err_msg=f"{it['id']} {d}")
                assert len(cont) >= 1
            if d == "S->S":  # the prompt is the whole spoken context: the readings part where the endings do
                assert len(prompt) >= 1 + n_ctx
            elif d[0] == "S":
                assert prompt[-1] == V.eos_speech_id
    for it in words:
        for d, kind in (("T->T", "text"), ("S->S", "speech")):
            prompt, conts = two_choice_prompt(it, d, V, tok, speak)
            for w, cont in zip(it["endings"], conts):
                want = packed("text", {"tokens": tok.encode(w)})[:-1] if kind == "text" \
                    else packed("speech", {"codes": speak(w)})
                np.testing.assert_array_equal(np.concatenate([prompt, cont]), want)


def test_qa_prompts_are_packed_qa_samples(material):
    """chat: <|bos|> <|user|> ... <|assistant|> as the QA shards' samples are packed (the <|bos|> the
    suite's prompt lacked before); passage QA S->T: spoken passage, written question (the shards'
    format); knowledge QA S->T: the spoken question alone; plain: a text / interleaved document."""
    tok = material[0]
    passage, q, a = "The budget was balanced. Taxes were cut.", "What were cut?", "Taxes"
    user, asst = V.special("<|user|>"), V.special("<|assistant|>")

    def cut_answer(doc):  # the packed document less the answer and its <|eos|>
        return doc[:len(doc) - len(tok.encode(a)) - 1]
    cases = {
        ("S", passage): packed("interleaved", qa_sample(speak(passage), tok.encode(q), tok.encode(a), V)),
        ("S", None): packed("interleaved", qa_sample(speak(q), np.zeros(0, np.int64), tok.encode(a), V)),
        ("T", passage): packed("text", {"tokens": np.concatenate([[user], tok.encode(passage), tok.encode(q), [asst],
                                                                  tok.encode(a)])}),
        ("T", None): packed("text", {"tokens": np.concatenate([[user], tok.encode(q), [asst], tok.encode(a)])}),
    }
    for (src, psg), doc in cases.items():
        got = qa_prompt(V, tok, src, q, psg, speak, "chat")
        np.testing.assert_array_equal(got, cut_answer(doc), err_msg=f"{src} {psg}")
        assert got[0] == V.bos_id and got[1] == user and got[-1] == asst
    np.testing.assert_array_equal(qa_prompt(V, tok, "T", q, passage, speak, "plain"),
                                  packed("text", {"tokens": tok.encode(f"{passage}\nQuestion: {q}\nAnswer:")})[:-1])
    np.testing.assert_array_equal(qa_prompt(V, tok, "S", q, None, speak, "plain"), packed("interleaved", {
        "tokens": np.concatenate([tok.encode("Question:"), [V.bos_speech_id], speak(q) + V.speech_offset,
                                  [V.eos_speech_id], tok.encode("\nAnswer:")]),
        "modality": np.array([0] * len(tok.encode("Question:")) + [1] * (len(q.split()) + 2)
                             + [0] * len(tok.encode("\nAnswer:")), np.uint8)})[:-1])


def test_one_voice_per_story_and_no_boundary_inside_it(material, tmp_path):
    """Every text a story item speaks in any direction is read by the item's voice (not a voice per
    text, as before: context and ending could differ); no story document has a span boundary or a
    second <|bos|> inside it."""
    tok, stories, words = material
    sc = SpeechCodes(tmp_path / "no-tokenizer", DEFAULT_VOICES, tmp_path)
    voices = set()
    for it in stories + words:
        assert any(spoken_texts(it, d) for d in DIRECTIONS)
        voices.add(sc.voice_for(it["id"]))
        for d in DIRECTIONS if it["context"] else ("T->T", "S->S"):
            prompt, conts = two_choice_prompt(it, d, V, tok, speak)
            for c in conts:
                doc = np.concatenate([prompt, c])
                pairs = set(zip(doc[:-1].tolist(), doc[1:].tolist()))
                assert (V.eos_speech_id, V.bos_speech_id) not in pairs, (it["id"], d)
                assert (doc == V.bos_id).sum() <= 1 and (doc == V.bos_speech_id).sum() <= 1, (it["id"], d)
    assert len(voices) > 1  # the items are spread over the suite's voices
    # a (text, voice) request is cached under its voice: two voices, two entries
    assert sc._key("x", DEFAULT_VOICES[0]) != sc._key("x", DEFAULT_VOICES[1])
