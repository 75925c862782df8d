"""Knowledge spoken QA (issue 40, point 7): a jsonl of {question, answers[]} becomes S->T and T->T rows
scored by answer match after normalisation, with Wilson intervals; the shipped source is FanOutQA's
questions written by people (the fanoutqa wheel). The model is planted: it replies a fixed text to
each question it finds in its prompt (as text ids for T->T, as the question's codes for S->T), so the
suite's prompts, greedy decoding, normalisation and rows are what is tested. Speech codes come from
the suite's code cache, filled for each question under its item's voice only: a request for any other
(text, voice) would synthesize, which the stand-in tokenizer dir cannot."""
from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch

from megaspeech.eval import knowledge_qa as kqa
from megaspeech.eval.speech import SpeechCodes
from tests.helpers.heldout_data import VOCAB
from tests.helpers.suite import suite_cfg

V = VOCAB
# (question, gold aliases, planted T->T reply, planted S->T reply); T->T: 3 answer matches (the first
# says more than the answer), 2 exact; S->T: 3 and 3 ("Parisian" is no match: whole words only)
PLANTED = [
    ("In which state was Lyndon B. Johnson born?", ["Texas"], "He was born in Texas.", "Ohio"),
    ("What is the capital of the United States?", ["Washington, D.C."], "washington dc", "Washington, D.C."),
    ("Who recorded Abbey Road?", ["The Beatles", "Beatles"], "Beatles", "the beatles"),
    ("Which city is the capital of France?", ["Paris"], "Parisian food", "paris"),
    ("What is the largest planet?", ["Jupiter"], "Saturn", "I do not know"),
]


class PlantedLM:
    """Replies `replies[src][question]` to a prompt holding that question; the decoding interface of
    eval.lm's backends (decoder(rows) with prefill / step / keep, logits over the `rows` columns)."""
    kind, version = "planted", "planted"

    def __init__(self, tok, speak):
        self.vocab, self.tok, self.speak = V, tok, speak

    def reply(self, prompt: np.ndarray) -> list[int]:
        p = prompt.tolist()
        for q, _, t_reply, s_reply in PLANTED:
            for needle, reply in ((self.tok.encode(q), t_reply), (self.speak(q) + V.speech_offset, s_reply)):
                n = list(needle)
                if any(p[i:i + len(n)] == n for i in range(len(p) - len(n) + 1)):
                    return [*self.tok.encode(reply).tolist(), V.eos_id]
        return [V.eos_id]

    def decoder(self, rows):
        lm = self

        class Decoder:
            def prefill(self, prompts, max_new):
                self.seqs = [lm.reply(p.numpy()) for p in prompts]
                self.pos, self.alive = [0] * len(prompts), list(range(len(prompts)))
                return self.logits()

            def logits(self):
                out = torch.zeros(len(self.alive), len(rows))
                for r, i in enumerate(self.alive):
                    out[r, int((rows == self.seqs[i][min(self.pos[i], len(self.seqs[i]) - 1)]).nonzero()[0, 0])] = 1
                return out

            def step(self, ids):
                for i in self.alive:
                    self.pos[i] += 1
                return self.logits()

            def keep(self, keep):
                self.alive = [self.alive[j] for j in keep.tolist()]
        return Decoder()


def test_planted_answers_scored_with_normalisation_in_both_directions(docs_dir, tmp_path, monkeypatch):
    import megaspeech.eval.run as run
    from megaspeech.data.text import TextTokenizer
    src = tmp_path / "qa.jsonl"
    src.write_text("".join(json.dumps({"question": q, "answers": a}) + "\n" for q, a, *_ in PLANTED))
    tokdir = tmp_path / "tok"
    tokdir.mkdir()
    (tokdir / "tokenizer.json").write_text(json.dumps({"codebook_size": V.speech_size}))
    cfg = suite_cfg(docs_dir, story_items=0, knowledge_qa=str(src), knowledge_qa_items=10, speech_tokenizer=str(tokdir),
                    max_answer_tokens=12, heldout_loss=False, baseline="planted")
    speak = lambda q: np.array([zlib.crc32(w.encode()) % V.speech_size for w in q.split()], np.int64)  # noqa: E731
    sc = SpeechCodes(tokdir, cfg.voices, tmp_path)  # the item voice's codes of each question, nothing else
    for it in kqa.knowledge_items(str(src), 10, cfg.seed):
        sc.cache[sc._key(it["question"], sc.voice_for(it["id"]))] = speak(it["question"])
    sc._save()
    monkeypatch.setattr(run, "load_lm", lambda path: PlantedLM(TextTokenizer(V), speak))
    res = run.evaluate(cfg, "planted", tmp_path, log=lambda m: None)
    rows = {(r["task"], r["direction"], r["metric"]): r for r in res["results"]}
    for d, am, em in (("T->T", 3, 2), ("S->T", 3, 3)):
        for metric, k in (("answer match", am), ("exact match", em)):
            r = rows[(kqa.TASK, d, metric)]
            assert r["n"] == 5 and r["value"] == pytest.approx(100 * k / 5), (d, metric)
            assert 0 <= r["ci95"][0] < r["value"] < r["ci95"][1] <= 100  # Wilson
        assert "note" in r and "5 of 10" in r["note"]  # fewer items than asked, said so
    versus = {(r["task"], r["direction"], r["metric"]): r for r in res["versus_baseline"]["rows"]}
    assert versus[(kqa.TASK, "S->T", "answer match")]["difference"] == 0  # the baseline: the same planted model
    assert (tmp_path / "compare.md").is_file() and (tmp_path / "baseline" / "eval.json").is_file()
    got = {q: p for q, _, p in res["examples"]["knowledge qa T->T"]}
    assert got["In which state was Lyndon B. Johnson born?"] == "He was born in Texas."


def test_normalisation_and_sources(tmp_path):
    assert kqa.normalize("  The  Beatles!! ") == "beatles" and kqa.normalize("Washington, D.C.") == "washington dc"
    assert kqa.answer_match("In 1946, I think.", ["1946"]) and not kqa.answer_match("19467", ["1946"])
    assert kqa.exact_match("an Apple", ["apple"]) and not kqa.exact_match("apple pie", ["apple"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?", "answers": ["a"]}\n{"question": "Q2?", "answers": []}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'answers'"):
        kqa.read_jsonl(bad)
    items = kqa.knowledge_items(kqa.FANOUTQA, 300, 0)  # the shipped source: written by people, in the wheel
    assert len(items) == 300 and len({it["question"] for it in items}) == 300
    assert all(it["question"].endswith("?") or " " in it["question"] for it in items)
    assert all(1 <= len(it["answers"][0].split()) <= 5 for it in items)
    assert items == kqa.knowledge_items(kqa.FANOUTQA, 300, 0)  # seeded


def test_difference_from_baseline_has_newcombes_interval():
    """eval.compare: Newcombe's (1998) worked example, 56/70 vs 48/80: difference 20.0 [5.24, 33.39];
    a row the baseline skipped is carried with its reason, not dropped."""
    from megaspeech.eval.compare import compare_markdown, compare_rows
    from megaspeech.eval.scores import proportion
    a = {"task": "t", "direction": "T->T", **proportion(np.array([1.0] * 56 + [0.0] * 14), "accuracy")}
    b = {"task": "t", "direction": "T->T", **proportion(np.array([1.0] * 48 + [0.0] * 32), "accuracy")}
    skipped = {"task": "u", "direction": "S->T", "metric": "accuracy", "skipped": "no speech_tokenizer set"}
    rows = compare_rows([a, {**skipped, "value": 1.0, "n": 3, "ci95": [0, 2]}], [b, skipped])
    assert rows[0]["difference"] == pytest.approx(20.0)
    assert rows[0]["difference_ci95"] == pytest.approx([5.24, 33.39], abs=0.01)
    assert rows[1]["baseline"] == "skipped: no speech_tokenizer set" and "difference" not in rows[1]
    assert "+20.0 [+5.2, +33.4]" in compare_markdown(rows, "demo", "untrained")
