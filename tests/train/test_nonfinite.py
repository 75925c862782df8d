"""NaN/inf loss: halt naming the step and last checkpoint (default), or skip and count it."""
from tests.helpers.launch import read_metrics, run_pretrain

COMMON = ["data.kind=synthetic", "train.steps=5", "train.seq_len=64", "checkpoint.interval=2",
          "checkpoint.save_at_end=false"]


def test_nonfinite_loss_halts_by_default(tmp_path):
    p = run_pretrain(1, tmp_path, COMMON, env={"MEGASPEECH_INJECT_NAN_STEP": "3"}, check=False)
    assert p.returncode != 0
    assert "non-finite loss nan at step 3" in p.stderr
    assert "step00000002" in p.stderr  # the last good checkpoint is named
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_skip_nonfinite_skips_the_update_and_counts_it(tmp_path):
    run_pretrain(1, tmp_path, COMMON + ["train.skip_nonfinite=true"], env={"MEGASPEECH_INJECT_NAN_STEP": "3"})
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 1, 1]
    assert rows[2]["loss"] != rows[2]["loss"]  # NaN logged at step 3
    # DeepSpeed dropped the NaN gradients instead of applying them: the weights stay finite.
    assert all(r["loss"] == r["loss"] and r["loss"] < rows[0]["loss"] + 1 for r in rows[3:])


def test_end_of_run_saves_step_zero_and_never_saves_a_step_twice(tmp_path):
    from megaspeech.checkpoint.offline import step_dirs
    base = ["data.kind=synthetic", "train.seq_len=64", "checkpoint.interval=2"]
    # train.steps=0 (e.g. an imported model saved as a checkpoint) writes the step-0 checkpoint
    run_pretrain(1, tmp_path / "zero", base + ["train.steps=0"])
    assert step_dirs(tmp_path / "zero" / "checkpoints") == ["step00000000"]
    # 3 steps: the interval's step 2, then the end (step 3); a rerun resumes at 3 and saves nothing new
    run_pretrain(1, tmp_path / "three", base + ["train.steps=3"])
    ck = tmp_path / "three" / "checkpoints"
    assert step_dirs(ck) == ["step00000003", "step00000002"]
    mtime = (ck / "step00000003").stat().st_mtime_ns
    run_pretrain(1, tmp_path / "three", base + ["train.steps=3"])
    assert (ck / "step00000003").stat().st_mtime_ns == mtime
