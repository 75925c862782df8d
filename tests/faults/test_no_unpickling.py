"""No code runs from a checkpoint file on any path: resume (DeepSpeed's engine loads), resharding
(DeepSpeed's universal converter) and export. A planted pickle whose __reduce__ writes a marker file
must be refused with an error naming the file, and the marker must not appear. The attacker is
assumed to control the whole directory, so meta.json's checksums are rewritten to match."""
from __future__ import annotations

import torch
import pytest

from megaspeech.checkpoint import engine as ckpt
from tests.helpers.fault_runs import copy_run, rewrite_checksums, run


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def plant(step_dir, name, marker):
    f = step_dir / name
    sd = torch.load(f, weights_only=False)  # the test's own file: trusted here
    sd["extra"] = Payload(marker)
    torch.save(sd, f)
    rewrite_checksums(step_dir)
    return f


def test_payload_runs_under_plain_unpickling(tmp_path):
    """The planted file is a real exploit: a plain torch.load runs it (so the refusals below mean something)."""
    marker = tmp_path / "marker"
    torch.save({"x": Payload(marker)}, tmp_path / "f.pt")
    torch.load(tmp_path / "f.pt", weights_only=False)
    assert marker.read_text() == "code ran"


def test_resume_refuses_a_planted_deepspeed_file(base_run, tmp_path):
    run_dir = copy_run(base_run, tmp_path / "run")
    marker = tmp_path / "marker"
    f = plant(run_dir / "checkpoints" / "step00000004", "zero_pp_rank_0_mp_rank_00_optim_states.pt", marker)
    p = run(run_dir, ["train.steps=5"])
    assert p.returncode != 0
    assert not marker.exists()
    assert "UnsafeCheckpointError" in p.stderr and f"{f}: refused to load" in p.stderr


def test_resharding_conversion_refuses_a_planted_file(base_run, tmp_path):
    run_dir = copy_run(base_run, tmp_path / "run")
    marker = tmp_path / "marker"
    src = run_dir / "checkpoints" / "step00000004"
    f = plant(src, "mp_rank_00_model_states.pt", marker)
    with pytest.raises(Exception) as e:
        ckpt.convert_to_universal(src, run_dir / "checkpoints_universal" / "step00000004")
    assert not marker.exists()
    assert type(e.value).__name__ == "UnsafeCheckpointError" and f"{f}: refused to load" in str(e.value)
    assert not (run_dir / "checkpoints_universal" / "step00000004").exists()


def test_export_refuses_a_planted_file(base_run, tmp_path):
    from megaspeech.checkpoint.hf_export import export_hf
    run_dir = copy_run(base_run, tmp_path / "run")
    marker = tmp_path / "marker"
    f = plant(run_dir / "checkpoints" / "step00000004", "mp_rank_00_model_states.pt", marker)
    with pytest.raises(Exception) as e:
        export_hf(run_dir / "checkpoints" / "step00000004", tmp_path / "hf")
    assert not marker.exists() and not (tmp_path / "hf").exists()
    assert type(e.value).__name__ == "UnsafeCheckpointError" and f"{f}: refused to load" in str(e.value)


def test_deepspeed_files_load_under_the_allow_list(base_run):
    """Every file DeepSpeed wrote (ZeRO optimizer state with its LossScaler etc.) loads weights-only."""
    from megaspeech.checkpoint.integrity import no_unpickling
    d = base_run / "checkpoints" / "step00000004"
    with no_unpickling():
        for f in sorted(d.glob("*.pt")):
            assert isinstance(torch.load(f, weights_only=False), dict)  # weights_only=False is overridden


def test_no_unpickling_nests(base_run):
    """DeepSpeed's engine load (guarded) runs inside the resume's block: leaving the inner block must
    keep the allow-list for the universal loader's direct torch.load calls that follow."""
    from megaspeech.checkpoint.integrity import _allowed_globals, no_unpickling
    f = base_run / "checkpoints" / "step00000004" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    original, before = torch.load, list(torch.serialization.get_safe_globals())
    with no_unpickling():
        with no_unpickling():
            torch.load(f)
        assert isinstance(torch.load(f), dict)
    # all undone (the allow-list is a set: its listing order is not part of the state)
    assert torch.load is original and set(torch.serialization.get_safe_globals()) == set(before)
    assert not set(_allowed_globals()) & set(before)
