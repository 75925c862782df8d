"""Acceptance 3 of issue 5: a TP=2 / PP=1 / DP=1 checkpoint resumed at TP=1 / PP=2 and at TP=1 / DP=2
(through DeepSpeed universal checkpoints, optimizer state kept) continues with the losses of the
un-resharded run."""
from __future__ import annotations

import pytest
import torch

from tests.helpers.checkpoint_runs import STEPS, launch, losses
from megaspeech.checkpoint.offline import full_state_dict


@pytest.mark.parametrize("layout", [["parallel.tensor=1", "parallel.pipeline=2"],
                                    ["parallel.tensor=1", "parallel.pipeline=1"]], ids=["tp1_pp2", "tp1_dp2"])
def test_resume_with_another_layout(layout, ref_run, tmp_path):
    src = ref_run / "checkpoints" / "step00000005"
    run = tmp_path / "run"
    rc = launch(run, [*layout, f"run.resume={src}", "checkpoint.interval=0", "checkpoint.save_at_end=true"])
    assert rc == 0, f"resharded run failed; see {run}/launch.log"
    ref = dict(losses(ref_run))
    got = losses(run)
    assert [s for s, _ in got] == list(range(6, STEPS + 1))  # the next 5 steps
    for s, loss in got:
        assert loss == pytest.approx(ref[s], rel=1e-4, abs=0), f"step {s}"
    # The conversion kept the Adam moments, and merged the TP slices as our export does.
    uni = run / "checkpoints_universal" / "step00000005" / "zero"
    sd, _ = full_state_dict(src)
    for name, w in sd.items():
        assert torch.equal(torch.load(uni / name / "fp32.pt", weights_only=True)["param"], w), name
        assert torch.load(uni / name / "exp_avg_sq.pt", weights_only=True)["param"].abs().sum() > 0, name
    # The run saved in its own layout (pipeline: per-layer files); its weights are the TP=2 run's.
    end, _ = full_state_dict(run / "checkpoints" / "step00000010")
    ref_end, _ = full_state_dict(ref_run / "checkpoints" / "step00000010")
    assert set(end) == set(ref_end)
    for name, w in end.items():
        assert torch.allclose(w, ref_end[name], rtol=1e-4, atol=1e-6), name
