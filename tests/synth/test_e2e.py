"""Acceptance 3 (shortened): speech pairs -> text-to-token training (the project's trainer) ->
interleaved shards from real text by 2 workers through the launcher -> pre-training on a
text + speech + interleaved mixture reports per-modality losses."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from megaspeech.data.shards import Dataset, read_shard
from megaspeech.synth.interleave import split_interleaved
from megaspeech.vocab import Vocab
from tests.helpers.synth_data import DEMO, write_pair_dataset, write_text_dataset
from tests.helpers.launch import ROOT, free_port, read_metrics, run_pretrain

SMALL = ["model.num_layers=2", "model.hidden_size=128", "model.ffn_hidden_size=256", "model.num_heads=4",
         "train.seq_len=128", "train.micro_batch=4", "train.global_batch=4", "checkpoint.interval=0",
         "metrics.wandb=disabled", "metrics.tensorboard=false"]


def _wer(pairs) -> float:
    """Corpus WER (%) by Levenshtein over normalized words, written independently of speech.asr."""
    import re

    def words(t):
        return [w.strip("'") for w in re.sub(r"[^a-z0-9' ]+", " ", t.lower().replace("-", " ")).split() if w.strip("'")]
    edits = total = 0
    for ref, hyp in pairs:
        r, h = words(ref), words(hyp)
        d = [[i + j if i * j == 0 else 0 for j in range(len(h) + 1)] for i in range(len(r) + 1)]
        for i in range(1, len(r) + 1):
            for j in range(1, len(h) + 1):
                d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (r[i - 1] != h[j - 1]))
        edits, total = edits + d[len(r)][len(h)], total + len(r)
    return 100.0 * edits / max(total, 1)


def test_text_to_token_interleave_pretrain(tmp_path, demo_tok, starts_word, speech_tokenizer):
    vocab = Vocab.load(DEMO / "vocab.json")
    vocab.sp_model = str(demo_tok.path)
    docs = list(read_shard(DEMO / "part-00000-000001.tar", "text"))
    pairs = write_pair_dataset(tmp_path / "pairs", docs[:20], vocab, starts_word, limit=300)
    # real text cut into ~150-token documents so that a few steps draw from every source
    chunks = [(f"{k}-{i}", {"tokens": s["tokens"][i:i + 150]}) for k, s in docs[20:23]
              for i in range(0, len(s["tokens"]), 150)]
    text = write_text_dataset(tmp_path / "text", chunks, vocab, per_shard=8)

    # 1. text-to-token: launch/train_text_to_token.py = the project's trainer with the TTS preset
    t2t = tmp_path / "t2t"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(free_port()),
           "launch/train_text_to_token.py", "--config", "configs/text_to_token_tiny.yaml", f"run.dir={t2t}",
           "train.progress_bar=false", *SMALL, "train.steps=12", "optim.warmup_steps=2",
           f"data.sources=[{{name: pairs, path: {pairs}}}]"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-4000:]
    rows = read_metrics(t2t)
    assert rows[-1]["loss_speech"] < rows[0]["loss_speech"] - 0.5
    # quality-check mode (acceptance 4 plumbing): codes for held-out transcripts, read back by the speech
    # tokenizer's ASR path. The toy model was trained on generated codes and the tokenizer here is untrained,
    # so only the mechanics are checked, not the WER value.
    ev = subprocess.run([sys.executable, "launch/train_text_to_token.py", "--config", "configs/text_to_token_tiny.yaml",
                         f"run.dir={t2t}", *SMALL, "--eval-heldout", str(pairs), "--speech-tokenizer",
                         str(speech_tokenizer), "--eval-limit", "3"],
                        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ev.returncode == 0, ev.stderr[-3000:]
    res = json.loads(ev.stdout.strip().splitlines()[-1])
    assert res["utterances"] == 3 and res["codes_per_word"] > 0 and len(res["examples"]) == 3
    # the references are the first held-out transcripts, and the reported WER is exactly the word edit
    # distance of the returned (reference, hypothesis) pairs (counted independently below)
    from megaspeech.data.text import TextTokenizer
    tok = TextTokenizer.from_dir(DEMO)
    want_refs = [tok.decode(s["text"]) for _, s in list(Dataset(pairs))[:3]]
    assert [r for r, _ in res["examples"]] == want_refs
    assert abs(res["wer"] - _wer(res["examples"])) < 1e-9
    assert res["model"].startswith("step00000012@")
    bad = subprocess.run([sys.executable, "launch/train_text_to_token.py", "--config", "configs/text_to_token_tiny.yaml",
                          "data.asr_fraction=0.5", f"data.sources=[{{name: text, path: {text}}}]"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "asr_fraction" in bad.stderr and "kind 'text'" in bad.stderr

    # 2. interleave real text with the trained model: two workers, as a job array would
    out = tmp_path / "inter"
    for w in (1, 0):
        p = subprocess.run([sys.executable, "launch/make_interleaved.py", "--config", "configs/interleave_tiny.yaml",
                            f"input={text}", f"output={out}", f"model={t2t}", "interleave.eta=0.35",
                            "generation.batch_size=16", "worker.count=2", f"worker.index={w}", "threads=1"],
                           cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert p.returncode == 0, p.stderr[-3000:]
    stats = json.loads(p.stdout.strip().splitlines()[-1])
    assert stats["merged"] and stats["speech_codes"] > 0 and stats["speech_codes_per_s"] > 0
    ds = Dataset(out, vocab, kind="interleaved")
    assert ds.manifest["meta"]["eta"] == 0.35 and ds.manifest["meta"]["text_to_token"].startswith("step00000012@")
    originals = dict(chunks)
    for key, s in ds:
        parts = split_interleaved(s["tokens"], vocab)
        got_text = np.concatenate([p for kind, p in parts if kind == "text"])
        spans = s["spans"].reshape(-1, 2)
        keep = np.ones(len(originals[key]["tokens"]), bool)
        for a, b in spans:
            keep[a:b] = False
        np.testing.assert_array_equal(got_text, originals[key]["tokens"][keep])  # text words kept, in order
        speech = [p for kind, p in parts if kind == "speech"]
        assert len(speech) == len(spans) and all(len(c) > 0 and c.max() < vocab.speech_size for c in speech)

    # 3. pre-train on the text + speech + interleaved mixture: per-modality losses are reported
    run_dir = tmp_path / "mix"
    run_pretrain(1, run_dir, SMALL + ["train.steps=8", "data.sources=[{name: text, path: %s, weight: 0.3}, "
                                      "{name: speech, path: %s, weight: 0.2}, {name: inter, path: %s, weight: 0.5}]"
                                      % (text, pairs, out)], config="configs/e2e_tiny.yaml")
    rows = read_metrics(run_dir)
    assert len(rows) == 8
    for r in rows:
        assert np.isfinite(r["loss_text"]) and np.isfinite(r["loss_speech"])
    # every source was drawn from
    assert all(rows[-1][f"data/samples/{n}"] > 0 for n in ("text", "speech", "inter")), rows[-1]
