"""Export never deletes what it did not write: a non-empty `out` without the export marker, or one
inside the checkpoint/run, is refused with everything left in place; a previous export is replaced
once the new one is complete; a missing model file is not blamed on ZeRO-3 in a ZeRO-1 run."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from megaspeech.checkpoint.hf_export import export_hf
from megaspeech.checkpoint import engine as ckpt
from megaspeech.checkpoint import offline
from tests.helpers.fault_runs import REPO, copy_run

_spec = importlib.util.spec_from_file_location("export_cli", REPO / "launch" / "export_hf.py")
export_cli = sys.modules["export_cli"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_cli)


def user_dir(out: Path) -> Path:
    """A directory a user wrote (one file, notes.txt): no writer of megaspeech may replace it."""
    out.mkdir()
    (out / "notes.txt").write_text("user data")
    return out


def test_refuses_a_non_empty_directory_it_did_not_write(base_run, tmp_path):
    out = user_dir(tmp_path / "mine")
    with pytest.raises(ValueError, match=f"out={out} is not empty and is not a previous export"):
        export_hf(base_run / "checkpoints" / "step00000004", out)
    assert (out / "notes.txt").read_text() == "user data"
    (tmp_path / "export.yaml").write_text("dtype: float32\n")
    rc = export_cli.main(["--config", str(tmp_path / "export.yaml"), f"checkpoint={base_run}", f"out={out}"])
    assert rc == 2 and (out / "notes.txt").read_text() == "user data"


@pytest.mark.parametrize("where", ["run", "checkpoints", "step", "inside_step"])
def test_refuses_out_inside_or_equal_to_the_run(base_run, tmp_path, where):
    run_dir = copy_run(base_run, tmp_path / "run")
    step = run_dir / "checkpoints" / "step00000004"
    out = {"run": run_dir, "checkpoints": run_dir / "checkpoints", "step": step, "inside_step": step / "hf"}[where]
    before = sorted(str(p) for p in run_dir.rglob("*"))
    with pytest.raises(ValueError, match="inside"):
        export_hf(step, out)
    assert sorted(str(p) for p in run_dir.rglob("*")) == before


def test_refuses_out_holding_the_checkpoint(base_run, tmp_path):
    run_dir = copy_run(base_run, tmp_path / "run")
    (tmp_path / ".megaspeech-export").write_text("")  # even a marker does not make deleting the checkpoint acceptable
    with pytest.raises(ValueError, match="contains the checkpoint"):
        export_hf(run_dir / "checkpoints" / "step00000004", tmp_path)
    assert offline.verify_collective(run_dir / "checkpoints" / "step00000004") == []


def test_replaces_a_previous_export(base_run, tmp_path):
    out = tmp_path / "hf"
    export_hf(base_run / "checkpoints" / "step00000002", out)
    assert (out / ".megaspeech-export").is_file() and (out / "model.safetensors").is_file()
    first = (out / "model.safetensors").read_bytes()
    (out / "stale.txt").write_text("from the previous export")
    export_hf(base_run / "checkpoints" / "step00000004", out)
    assert (out / ".megaspeech-export").is_file() and not (out / "stale.txt").exists()
    assert (out / "model.safetensors").read_bytes() != first  # step 4's weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temp or old directory left


def test_missing_model_file_hint_matches_the_zero_stage(base_run, tmp_path):
    step = copy_run(base_run, tmp_path / "run") / "checkpoints" / "step00000004"
    (step / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(Exception) as e:
        offline.full_state_dict(step)
    assert "mp_rank_00_model_states.pt is missing" in str(e.value) and "ZeRO-3" not in str(e.value)
    shutil.rmtree(step)


def test_bridge_export_refuses_what_it_did_not_write(base_run, tmp_path):
    """The bridge export (launch/export_bridge.py) follows the same rule as the HF export: a user's
    directory is refused before any checkpoint is read, and left as it was."""
    from megaspeech.bridge.export import export_bridge
    out = user_dir(tmp_path / "mine")
    with pytest.raises(ValueError, match=f"out={out} is not empty and is not a previous export"):
        export_bridge(base_run / "checkpoints" / "step00000004", out)
    assert (out / "notes.txt").read_text() == "user data"
    with pytest.raises(ValueError, match="inside"):
        export_bridge(base_run / "checkpoints" / "step00000004", base_run / "export")


def test_speech_tokenizer_save_refuses_a_directory_that_is_not_a_tokenizer(tmp_path):
    from megaspeech.speech.tokenizer import save_tokenizer
    out = user_dir(tmp_path / "tok")
    with pytest.raises(FileExistsError, match="not a speech tokenizer directory"):
        save_tokenizer(out, model=None, cfg=None, whisper=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"] and (out / "notes.txt").read_text() == "user data"
