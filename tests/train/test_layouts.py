"""Acceptance 1 of the trainer: every parallel layout trains the same model as one process.

Same seed, same global batch (8 sequences), 10 steps, fp32: TP=2, PP=2, DP=2 (ZeRO-1) and TP=2+SP
loss sequences equal the single-process run within 1e-4 relative; so do runs with activation
checkpointing (recomputation must not change the function) and with the plain logits loss in place
of the fused chunked one (train.fused_loss, the default, used by every other run here).
"""
import pytest

from tests.helpers.launch import losses, run_pretrain

COMMON = ["data.kind=synthetic", "train.steps=10", "train.global_batch=8", "train.seq_len=64",
          "checkpoint.save_at_end=false", "parallel.zero_stage=1"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("single")
    run_pretrain(1, d, COMMON + ["train.micro_batch=4"])
    ref = losses(d)
    assert len(ref) == 10 and ref[-1] < ref[0]
    return ref


@pytest.mark.parametrize("name,overrides", [
    ("tp2", ["parallel.tensor=2", "train.micro_batch=4"]),
    ("pp2", ["parallel.pipeline=2", "train.micro_batch=2"]),
    ("dp2", ["train.micro_batch=2"]),
    ("tp2_sp", ["parallel.tensor=2", "parallel.sequence_parallel=true", "train.micro_batch=4"]),
    ("pp2_ac", ["parallel.pipeline=2", "train.micro_batch=2", "train.activation_checkpointing=[0,3]"]),
    ("ac_all_1proc", ["train.micro_batch=4", "train.activation_checkpointing=all"]),
    # the reference uses the default fused chunked loss; the plain logits loss trains the same
    ("plain_loss_1proc", ["train.micro_batch=4", "train.fused_loss=false"]),
])
def test_layout_matches_single_process(reference, tmp_path, name, overrides):
    run_pretrain(1 if name.endswith("1proc") else 2, tmp_path, COMMON + overrides)
    got = losses(tmp_path)
    assert len(got) == len(reference)
    for step, (a, b) in enumerate(zip(got, reference), 1):
        assert abs(a - b) <= 1e-4 * abs(b), f"{name} step {step}: {a} vs single-process {b}"
