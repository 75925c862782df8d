"""The recipe in one command at minimum size (configs/pipeline/smoke.yaml): every stage runs, consumes
the previous stage's output, report.json holds every metric; a rerun skips everything, a changed
input redoes its stage, an interrupted stage resumes."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from megaspeech.data.shards import Dataset
from megaspeech.pipeline.layout import MIXTURE_PATHS, STAGES
from megaspeech.synth.interleave import split_interleaved
from megaspeech.vocab import Vocab

ROOT = Path(__file__).resolve().parents[2]
RUN_STAGES = [s for s in STAGES if s != "report"]
METRICS = {  # what report.json must hold per stage
    "text": ["samples", "tokens", "text_size", "speech_size", "tokenizer"],
    "speech_corpus": ["train_utterances", "heldout_utterances"],
    "tokenizer": ["codebook_size", "ce", "perplexity", "step"],
    "speech_decoder": ["objective", "step", "eta_s"],
    "speech_shards": ["pairs_samples", "unsup_samples", "heldout_samples", "pairs_tokens", "unsup_tokens"],
    "text_to_token": ["steps", "final_loss_speech", "first_loss_speech"],
    "interleaved": ["docs", "tokens", "eta", "text_to_token"],
    "speech_qa": ["qa_pairs", "tokens"],
    "pretrain": ["steps", "final_loss_text", "final_loss_speech", "weights", "budget_tokens", "expected_epochs"],
    "export": ["checkpoint", "vocab_rows", "architecture"],
    "eval": ["heldout_loss_text", "heldout_loss_speech", "heldout_loss_asr", "heldout_loss_tts",
             "heldout_loss_text_ci95", "suite"],
}


def _pipeline(run: Path, *args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "launch/pipeline.py", "--config", "configs/pipeline/smoke.yaml",
                        f"run.dir={run}", *args], cwd=ROOT, capture_output=True, text=True, timeout=1500,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p


def _marker(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "stage.json").read_text())


def test_smoke_pipeline_end_to_end(tmp_path):
    run = tmp_path / "run"
    first = _pipeline(run)
    m = {s: _marker(run, s) for s in RUN_STAGES}
    report = json.loads((run / "report.json").read_text())
    assert report["stages_done"] == RUN_STAGES and report["stages_missing"] == []
    for stage, keys in METRICS.items():
        got = report["stages"][stage]["metrics"]
        assert [k for k in keys if k not in got] == [], (stage, got)
        assert (run / stage / "log.txt").stat().st_size > 0
        for up, h in m[stage]["upstream"].items():  # it ran on the outputs of these exact upstream runs
            assert h == m[up]["hash"], (stage, up)
    assert "| eval |" in (run / "report.md").read_text()
    for line in ("[6/11 text_to_token] start", "[pretrain] step 6/6 (100%)", "report:"):
        assert line in first.stdout, first.stdout

    # the vocabulary is derived from the speech tokenizer: K codes everywhere
    k = m["tokenizer"]["metrics"]["codebook_size"]
    text_vocab = Vocab.load(run / "text/shards/vocab.json")
    assert text_vocab.speech_size == k == 64 and text_vocab.sp_model == str(run / "text/tokenizer/tokenizer.model")
    for split in ("pairs", "heldout"):
        Vocab.load(run / "speech_shards" / split / "vocab.json").check_same(text_vocab, split)
        man = json.loads((run / "speech_shards" / split / "manifest.json").read_text())
        assert man["meta"]["tokenizer"] == str(run / "tokenizer/tokenizer") and man["meta"]["codebook_size"] == k
    pairs = list(Dataset(run / "speech_shards/pairs", text_vocab, kind="speech"))
    assert len(pairs) == 24 and all("text" in s and s["codes"].max() < k for _, s in pairs)
    # text-to-token trained on the pairs; interleaved made from the text shards by that model
    t2t = yaml.safe_load((run / "text_to_token/config.yaml").read_text())
    assert [s["path"] for s in t2t["data"]["sources"]] == [str(run / "speech_shards/pairs")]
    inter = json.loads((run / "interleaved/shards/manifest.json").read_text())
    assert inter["meta"]["source"] == str(run / "text/shards")
    latest = (run / "text_to_token/checkpoints/latest").read_text().strip()
    assert inter["meta"]["text_to_token"].startswith(latest + "@")
    text = dict(Dataset(run / "text/shards", text_vocab, kind="text"))
    n_speech = 0
    for key, s in Dataset(run / "interleaved/shards", text_vocab, kind="interleaved"):
        parts = split_interleaved(s["tokens"], text_vocab)
        keep = np.ones(len(text[key]["tokens"]), bool)
        for a, b in s["spans"].reshape(-1, 2):
            keep[a:b] = False
        kept = [p for kind, p in parts if kind == "text"]
        np.testing.assert_array_equal(np.concatenate(kept) if kept else [], text[key]["tokens"][keep])
        n_speech += sum(kind == "speech" for kind, _ in parts)
    assert n_speech > 0
    qa = json.loads((run / "speech_qa/shards/manifest.json").read_text())
    assert qa["meta"]["speech_tokenizer"] == str(run / "tokenizer/tokenizer") and qa["samples"] > 0
    # pre-training: the GLM-4-Voice mixture over the stage outputs, every source drawn from
    pre = yaml.safe_load((run / "pretrain/config.yaml").read_text())
    src = {s["name"]: s for s in pre["data"]["sources"]}
    assert {n: s["path"] for n, s in src.items()} == {n: str(run / p) for n, p in MIXTURE_PATHS.items()}
    w = m["pretrain"]["metrics"]["weights"]
    budget = 6 * 8 * 256
    assert w["text"] == 0.3 and math.isclose(sum(w.values()), 1.0)
    once = {n: m["speech_shards"]["metrics"][t] / budget for n, t in (("speech", "unsup_tokens"), ("asr_tts", "pairs_tokens"))}
    scale = min(1.0, 0.1 / sum(once.values()))  # one epoch of the budget, at most pretrain.speech_share_max (0.1)
    for name in once:
        assert math.isclose(w[name], once[name] * scale, rel_tol=1e-5) and src[name]["epochs"] == 1
    assert w["interleaved"] == pytest.approx(1 - 0.3 - sum(once.values()) * scale) and w["interleaved"] >= 0.6
    assert all(m["pretrain"]["metrics"][f"data/samples/{n}"] > 0 for n in MIXTURE_PATHS)
    assert pre["vocab"]["speech_size"] == k and pre["vocab"]["text_size"] == text_vocab.text_size
    # export of the pre-trained checkpoint, scored on the held-out pairs
    assert m["export"]["metrics"]["checkpoint"] == (run / "pretrain/checkpoints/latest").read_text().strip()
    assert json.loads((run / "export/hf/config.json").read_text())["vocab_size"] >= text_vocab.size
    ev = m["eval"]["metrics"]
    assert ev["heldout_pairs"] == 6 and m["eval"]["outputs"]["heldout"] == str(run / "speech_shards/heldout")
    for x in ("text", "speech", "asr", "tts"):
        lo, hi = ev[f"heldout_loss_{x}_ci95"]
        assert 0 < lo <= ev[f"heldout_loss_{x}"] <= hi < 2 * math.log(text_vocab.size)
    # the evaluation suite ran on the export with the run's speech tokenizer, checked against its data
    suite = ev["suite"]
    done = {(r["task"], r["direction"]) for r in suite["results"] if "value" in r}
    assert {("story (easy: other document)", "S->S"), ("word vs non-word", "S->S"), ("passage QA (extractive)", "S->T"),
            ("knowledge QA", "S->T"), ("ASR", "S->T"), ("TTS", "T->S")} <= done, done
    # the TTS row heard the generated codes through the run's own speech decoder (the speech_decoder stage)
    assert m["speech_decoder"]["outputs"]["decoder"] == str(run / "speech_decoder/decoder")
    assert json.loads((run / "speech_decoder/decoder/decoder.json").read_text())["tokenizer"]["path"] == str(run / "tokenizer/tokenizer")
    assert {str(run / p) for p in (*MIXTURE_PATHS.values(), "speech_corpus/train")} <= set(suite["split"]["checked_against"])
    # provenance: every training dataset (speech included) lists its documents; the n-gram check read each
    assert set(suite["split"]["training_docs"]) == set(suite["split"]["checked_against"])
    assert all(suite["split"]["training_docs"].values()), suite["split"]["training_docs"]
    overlap = json.loads((run / "eval/suite/eval.json").read_text())["contamination"]
    assert [d["path"] for d in overlap["datasets"]] == suite["split"]["checked_against"]
    suite_cfg = json.loads((run / "eval/suite/eval.json").read_text())["config"]
    assert suite_cfg["speech_tokenizer"] == str(run / "tokenizer/tokenizer")
    assert suite_cfg["speech_decoder"] == str(run / "speech_decoder/decoder")
    assert "## Evaluation suite" in (run / "report.md").read_text()

    # rerun: every stage is skipped, nothing rewritten
    again = _pipeline(run)
    assert again.stdout.count("skip: done, inputs unchanged") == len(RUN_STAGES), again.stdout
    assert {s: _marker(run, s) for s in RUN_STAGES} == m
    # an interrupted stage (started, no marker) resumes in place
    (run / "eval" / "stage.json").unlink()
    resumed = _pipeline(run, "--until", "eval")
    assert "[11/11 eval] resume: an interrupted run with the same inputs" in resumed.stdout
    assert resumed.stdout.count("skip: done") == len(RUN_STAGES) - 1
    # an ablation variant: the same data stages, pre-training without interleaved data in its own dir
    var = _pipeline(run, "run.variant=no_interleaved", "pretrain.interleaved_scale=0", "--until", "pretrain")
    assert var.stdout.count("skip: done") == 8 and "[9/11 pretrain] start" in var.stdout
    pv = yaml.safe_load((run / "pretrain-no_interleaved/config.yaml").read_text())
    assert [s["name"] for s in pv["data"]["sources"]] == ["text", "speech", "asr_tts"]
    wv = json.loads((run / "report-no_interleaved.json").read_text())["stages"]["pretrain"]["metrics"]["weights"]
    assert math.isclose(sum(wv.values()), 1.0) and wv["asr_tts"] / wv["text"] == pytest.approx(w["asr_tts"] / w["text"])
    assert _marker(run, "pretrain") == m["pretrain"]  # the recipe's own run is untouched
    # the ablation table: the recipe and the variant side by side, from their report*.json
    table = _pipeline(run, "--compare").stdout
    assert table == (run / "ablation.md").read_text() and "| metric | recipe | no_interleaved |" in table
    assert f"| interleaved share of tokens | {w['interleaved']:.2f} | 0.00 |" in table
    lo, hi = ev["heldout_loss_speech_ci95"]
    assert f"| held-out loss speech (nats) | {ev['heldout_loss_speech']:.3f} [{lo:.3f}, {hi:.3f}] | - |" in table
    from megaspeech.eval.heldout_loss import speech_ngram_losses
    ref = speech_ngram_losses(run / "speech_shards/unsup", run / "speech_shards/heldout", ev["heldout_pairs"])
    assert f"| held-out loss speech of a count bigram of the training codes (nats) | {ref['bigram']:.3f} | {ref['bigram']:.3f} |" in table
    # a changed input redoes its stage (and only it, up to --until); upstream stays
    changed = _pipeline(run, "--until", "interleaved",
                        "interleaved.overrides=[interleave.eta=0.5, interleave.docs_per_batch=32, threads=1]")
    assert changed.stdout.count("skip: done") == 6 and "[7/11 interleaved] redo: inputs changed" in changed.stdout
    assert json.loads((run / "interleaved/shards/manifest.json").read_text())["meta"]["eta"] == 0.5
    assert _marker(run, "pretrain") == m["pretrain"]  # not reached (--until)
    # the variant without interleaved data does not read it: its pre-training stands
    var2 = _pipeline(run, "run.variant=no_interleaved", "pretrain.interleaved_scale=0", "--until", "pretrain",
                     "interleaved.overrides=[interleave.eta=0.5, interleave.docs_per_batch=32, threads=1]")
    assert "[9/11 pretrain] skip: done, inputs unchanged" in var2.stdout, var2.stdout
    # --from redoes that stage; the earlier markers are taken as they are
    redo = _pipeline(run, "--from", "export", "--until", "export")
    assert "[10/11 export] redo: --from" in redo.stdout and "start" not in redo.stdout.split("[10/11")[0]
