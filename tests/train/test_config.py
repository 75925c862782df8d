"""Config loading: inheritance, overrides, and errors that name the field (acceptance 3)."""
import subprocess
import sys

import pytest

from megaspeech.config.deepspeed import deepspeed_config
from megaspeech.config.load import ConfigError, load_config
from megaspeech.config.schema import PretrainConfig
from tests.helpers.launch import ROOT

TINY = ROOT / "configs" / "tiny.yaml"


def test_base_inheritance_and_overrides(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {TINY}\nmodel:\n  num_layers: 2\ntrain:\n  steps: 7\n")
    cfg = load_config(PretrainConfig, child, ["train.steps=20", "optim.lr=1e-3", "run.dir=/tmp/r"])
    assert (cfg.model.num_layers, cfg.model.hidden_size) == (2, 256)  # child over base, base kept
    assert (cfg.train.steps, cfg.optim.lr, cfg.run.dir) == (20, 1e-3, "/tmp/r")  # CLI over both


def test_deepspeed_config_is_derived():
    cfg = load_config(PretrainConfig, TINY, ["train.global_batch=16", "train.micro_batch=2",
                                             "parallel.tensor=2", "train.precision=bf16"])
    ds = deepspeed_config(cfg, world_size=4)  # TP=2 -> DP=2 -> accumulation 16 / (2 x 2)
    assert ds["train_batch_size"] == 16 and ds["gradient_accumulation_steps"] == 4
    assert ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] == 1


BAD = [
    (["model.hiden_size=256"], "model.hiden_size"),
    (["train.steps=abc"], "train.steps"),
    (["model.hidden_size=250"], "model.hidden_size"),
    (["parallel.tensor=3"], "parallel.tensor"),
    (["parallel.tensor=4"], "num_kv_heads"),
    (["parallel.pipeline=3"], "parallel.pipeline"),
    (["train.global_batch=7"], "train.global_batch"),
    (["parallel.sequence_parallel=true"], "parallel.sequence_parallel"),
    (["parallel.pipeline=2", "parallel.zero_stage=2"], "parallel.zero_stage"),
    (["train.precision=fp8"], "train.precision"),
    (["optim.min_lr=1.0"], "optim.min_lr"),
    (["model.num_kv_heads=3"], "model.num_kv_heads"),
    (["train.activation_checkpointing=[0,9]"], "train.activation_checkpointing"),
    (["parallel.tensor=2", "model.vocab_multiple=63"], "model.vocab_multiple"),
]


@pytest.mark.parametrize("overrides,field", BAD)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError) as e:
        load_config(PretrainConfig, TINY, overrides)
    assert field in str(e.value)


@pytest.mark.parametrize("world,overrides,field", [
    (3, ["parallel.tensor=2"], "parallel.tensor"),      # 2 does not divide 3 processes
    (4, ["train.micro_batch=4"], "train.global_batch"),  # 8 sequences over DP=4 x micro 4
])
def test_bad_layout_for_world_size(world, overrides, field):
    cfg = load_config(PretrainConfig, TINY, overrides)
    with pytest.raises(ConfigError) as e:
        cfg.data_parallel_size(world)
    assert field in str(e.value)


def test_missing_base_file_is_named(tmp_path):
    child = tmp_path / "c.yaml"
    child.write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(PretrainConfig, child)


def test_cli_rejects_before_process_groups():
    p = subprocess.run([sys.executable, "launch/pretrain.py", "--config", "configs/tiny.yaml", "parallel.tensor=3"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "parallel.tensor" in p.stderr and "Traceback" not in p.stderr
