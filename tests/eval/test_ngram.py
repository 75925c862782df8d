"""The speech-loss references of the ablation table (megaspeech.eval.heldout_loss.speech_ngram_losses):
count unigram / bigram models of training codes, scored on held-out speech positions."""
from __future__ import annotations

import math

import numpy as np
import pytest

from megaspeech.data.shards import ShardWriter
from megaspeech.eval.heldout_loss import speech_ngram_losses
from megaspeech.vocab import Vocab

V = Vocab(text_size=100, speech_size=16)


def _write(path, seqs):
    with ShardWriter(path, "speech", V) as w:
        for i, c in enumerate(seqs):
            w.write(f"u{i:03d}", {"codes": np.asarray(c, np.int32), "text": np.array([1, 2], np.int32),
                                  "doc": f"generated/u{i:03d}"})
    V.save(path / "vocab.json")


def test_bigram_finds_a_planted_successor_rule_the_unigram_cannot(tmp_path):
    # every code is used equally often, and each code is always followed by the next one (mod 16)
    rng = np.random.default_rng(0)
    seqs = [(s + np.arange(64)) % 16 for s in rng.integers(0, 16, 200)]
    _write(tmp_path / "train", seqs)
    _write(tmp_path / "held", seqs[:20])
    got = speech_ngram_losses(tmp_path / "train", tmp_path / "held", limit=20)
    # unigram: 16 codes equally likely plus a rare end symbol, ~ln 16 per position
    assert got["unigram"] == pytest.approx(math.log(16), abs=0.05)
    assert got["bigram"] < 0.15  # the successor is known; only the first code and the end cost much
    # limit: only the first `limit` held-out sequences are scored (the rest break the rule)
    _write(tmp_path / "held2", seqs[:3] + [np.zeros(64, np.int32)] * 5)
    assert speech_ngram_losses(tmp_path / "train", tmp_path / "held2", limit=3)["bigram"] < 0.15
    assert speech_ngram_losses(tmp_path / "train", tmp_path / "held2", limit=8)["bigram"] > 3
