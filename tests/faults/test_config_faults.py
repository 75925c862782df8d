"""Config faults: YAML and override syntax errors are ConfigErrors naming the file or the override,
a missing `base:` file is blamed on the file naming it, every numeric field is range-checked at load,
every shape-changing model field is compared on resume, a damaged meta.json is named."""
from __future__ import annotations

import dataclasses
import re
import typing

import pytest

from megaspeech.config.load import ConfigError, load_config
from megaspeech.config.schema import PretrainConfig
from megaspeech.checkpoint import engine as ckpt
from megaspeech.checkpoint import offline
from megaspeech.train.trainer import check_compatible
from tests.helpers.fault_runs import REPO

TINY = REPO / "configs" / "tiny.yaml"


def test_yaml_syntax_error_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  steps: [1, 2\n")
    with pytest.raises(ConfigError, match=f"{f}: not valid YAML.*line"):
        load_config(PretrainConfig, f)


def test_yaml_syntax_error_in_a_base_names_that_file(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {hidden_size: 64\n")
    (tmp_path / "top.yaml").write_text("base: base.yaml\n")
    with pytest.raises(ConfigError, match=f"{tmp_path / 'base.yaml'}: not valid YAML"):
        load_config(PretrainConfig, tmp_path / "top.yaml")


def test_missing_base_blames_the_file_that_names_it(tmp_path):
    (tmp_path / "top.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config(PretrainConfig, tmp_path / "top.yaml")
    assert f"{tmp_path / 'top.yaml'}: its `base:` names {tmp_path / 'nowhere.yaml'}" in str(e.value)
    assert "--config" not in str(e.value)


@pytest.mark.parametrize("override", ["train.steps=[1", "model.hidden_size={a: 1", "train.steps.x=3", "train..steps=3"])
def test_override_syntax_error_names_the_override(override):
    with pytest.raises(ConfigError, match=re.escape(f"override {override!r}")):
        load_config(PretrainConfig, TINY, [override])


def _numeric_fields(cls=PretrainConfig, prefix=""):
    """Dotted names of every int/float field (Optional included) of the pretrain schema."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _numeric_fields(tp, f"{prefix}{f.name}.")
        elif {a for a in (typing.get_args(tp) or (tp,)) if a is not type(None)} & {int, float}:
            if typing.get_origin(tp) not in (list, tuple):
                yield f"{prefix}{f.name}"


NUMERIC = sorted(_numeric_fields())


def test_the_schema_has_the_numeric_fields_we_think():
    assert {"train.log_interval", "model.vocab_multiple", "optim.eps", "checkpoint.keep", "run.seed"} <= set(NUMERIC)


@pytest.mark.parametrize("field", NUMERIC)
def test_every_numeric_field_rejects_out_of_range_values(field):
    """-1 is out of range for every numeric field (sizes, counts, rates, seeds): refused naming it."""
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(PretrainConfig, TINY, [f"{field}=-1"])


@pytest.mark.parametrize("override", ["train.log_interval=0", "model.vocab_multiple=0", "model.num_heads=0",
                                      "model.num_kv_heads=0", "train.global_batch=0", "optim.eps=0",
                                      "model.norm_eps=0", "optim.decay_steps=0", "train.peak_tflops=0",
                                      "optim.lr=.inf", "optim.lr=.nan", "data.speech_fraction=1.5"])
def test_zero_and_non_finite_values_that_crash_later_are_refused(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(PretrainConfig, TINY, [override])


SHAPE_FIELDS = {"num_layers": 6, "hidden_size": 128, "ffn_hidden_size": 512, "num_heads": 4, "num_kv_heads": 4,
                "qkv_bias": True, "tie_embeddings": True, "vocab_multiple": 128, "family": "glm",
                "rope_fraction": 0.5}


@pytest.mark.parametrize("field", sorted(SHAPE_FIELDS))
def test_every_shape_changing_field_is_compared_on_resume(field):
    cfg = load_config(PretrainConfig, TINY)
    saved = dataclasses.asdict(cfg)
    assert saved["model"][field] != SHAPE_FIELDS[field]
    saved["model"][field] = SHAPE_FIELDS[field]
    with pytest.raises(ValueError, match=f"model.{field}={SHAPE_FIELDS[field]!r} but this run has model.{field}="):
        check_compatible(cfg, {"config": saved, "vocab": cfg.vocab.layout()}, "ckpt")


def test_damaged_meta_json_is_named(tmp_path):
    from megaspeech.checkpoint.integrity import CheckpointError
    (tmp_path / "meta.json").write_text('{"step": 4, "layout": ')
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'meta.json'}: not valid JSON"):
        offline.read_meta(tmp_path)
