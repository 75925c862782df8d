"""Resuming from a checkpoint of another vocabulary or model shape fails naming the field."""
from __future__ import annotations

import pytest

from tests.helpers.checkpoint_runs import COMMON, REPO
from megaspeech.config.load import load_config
from megaspeech.config.schema import PretrainConfig
from megaspeech.checkpoint.offline import read_meta
from megaspeech.train.trainer import check_compatible


@pytest.mark.parametrize("override, field", [("model.hidden_size=128", "model.hidden_size"),
                                             ("vocab.speech_size=2048", "vocab.speech_size"),
                                             ("model.num_kv_heads=4", "model.num_kv_heads")])
def test_incompatible_checkpoint_names_the_field(ref_run, override, field):
    ckpt = ref_run / "checkpoints" / "step00000005"
    same = load_config(PretrainConfig, str(REPO / "configs" / "tiny.yaml"), [*COMMON, "parallel.tensor=2"])
    check_compatible(same, read_meta(ckpt), ckpt)  # the run's own config passes
    other = load_config(PretrainConfig, str(REPO / "configs" / "tiny.yaml"), [*COMMON, override])
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        check_compatible(other, read_meta(ckpt), ckpt)


def test_incomplete_checkpoint_dir_is_refused(tmp_path):
    (tmp_path / "step00000004.tmp").mkdir()
    with pytest.raises(FileNotFoundError, match="latest"):
        read_meta(tmp_path / "step00000004.tmp")
