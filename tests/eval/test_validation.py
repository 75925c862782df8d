"""Validation during training (issue 13, part 1): the held-out loss every eval.interval steps is the
same at TP=2 and PP=2 as in one process (1e-4 relative), it changes neither the training losses nor
the data position, and a run resumed from a checkpoint logs the same losses and validation losses."""
from __future__ import annotations

import json

import pytest

from megaspeech.config.load import ConfigError, load_config
from megaspeech.config.schema import PretrainConfig
from tests.helpers.heldout_data import write_heldout
from tests.helpers.launch import ROOT, read_metrics, run_pretrain
from tests.helpers.suite import SMALL


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    return write_heldout(tmp_path_factory.mktemp("heldout"))


def eval_on(heldout) -> list[str]:
    text, speech = heldout
    return [f"eval.sources=[{{path: {text}}}, {{path: {speech}}}]", "eval.interval=4", "eval.batches=2"]


def samples(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "samples_rank0.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single(heldout, tmp_path_factory):
    d = tmp_path_factory.mktemp("single")
    run_pretrain(1, d, SMALL + ["train.micro_batch=4"] + eval_on(heldout), env={"MEGASPEECH_LOG_SAMPLES": "1"})
    return d


def val_records(run_dir) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run_dir) if "val_loss" in r}


def test_val_logged_per_modality_and_no_effect_on_training(single, heldout, tmp_path):
    val = val_records(single)
    assert sorted(val) == [4, 8]
    for r in val.values():
        assert r["val_loss_text"] > 0 and r["val_loss_speech"] > 0 and r["val_tokens"] > 0
        lo, hi = sorted([r["val_loss_text"], r["val_loss_speech"]])
        assert lo <= r["val_loss"] <= hi  # the overall loss is the token-weighted mix of the two
    assert val[8]["val_loss"] < val[4]["val_loss"]  # the model learns (held-out text from the same language)
    # the same run without validation: identical training losses and the same samples at every step
    off = tmp_path / "off"
    run_pretrain(1, off, SMALL + ["train.micro_batch=4"], env={"MEGASPEECH_LOG_SAMPLES": "1"})
    assert [r["loss"] for r in read_metrics(off)] == [r["loss"] for r in read_metrics(single)]
    assert samples(off) == samples(single)
    assert not any("val_loss" in r for r in read_metrics(off))


@pytest.mark.parametrize("name,overrides", [
    ("tp2", ["parallel.tensor=2", "train.micro_batch=4"]),
    ("pp2", ["parallel.pipeline=2", "train.micro_batch=2"]),
])
def test_val_loss_same_at_every_layout(single, heldout, tmp_path, name, overrides):
    run_pretrain(2, tmp_path, SMALL + overrides + eval_on(heldout) + ["checkpoint.interval=0",
                                                                      "checkpoint.save_at_end=false"])
    ref, got = val_records(single), val_records(tmp_path)
    assert sorted(got) == sorted(ref)
    for step in ref:
        for k in ("val_loss", "val_loss_text", "val_loss_speech"):
            assert abs(got[step][k] - ref[step][k]) <= 1e-4 * ref[step][k], f"{name} step {step} {k}"
        assert got[step]["val_tokens"] == ref[step]["val_tokens"]


def test_resume_exact_with_validation(single, heldout, tmp_path):
    run_pretrain(1, tmp_path, SMALL + ["train.micro_batch=4", f"run.resume={single}/checkpoints/step00000004"]
                 + eval_on(heldout), env={"MEGASPEECH_LOG_SAMPLES": "1"})
    ref = {r["step"]: r for r in read_metrics(single)}
    got = read_metrics(tmp_path)
    assert [r["step"] for r in got] == [5, 6, 7, 8]
    for r in got:
        assert r["loss"] == ref[r["step"]]["loss"]
    assert got[-1]["val_loss"] == ref[8]["val_loss"]
    assert samples(tmp_path) == [s for s in samples(single) if s["step"] > 4]


def test_eval_config_validated(tmp_path):
    with pytest.raises(ConfigError, match="eval.sources"):
        load_config(PretrainConfig, ROOT / "configs/tiny.yaml", ["eval.interval=10"])
    with pytest.raises(ConfigError, match="eval.batches"):
        load_config(PretrainConfig, ROOT / "configs/tiny.yaml", ["eval.batches=0"])
    assert load_config(PretrainConfig, ROOT / "configs/tiny.yaml").eval.interval == 0  # off by default
