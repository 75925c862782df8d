"""bf16 (the 9B config's precision) with pipeline parallelism: trains, checkpoints, and resumes
exactly (DeepSpeed's bf16 optimizer with fp32 gradient accumulation, ZeRO-1)."""
from tests.helpers.launch import losses, run_pretrain

COMMON = ["data.kind=synthetic", "train.seq_len=64", "train.micro_batch=2", "train.precision=bf16",
          "parallel.pipeline=2", "checkpoint.interval=2", "metrics.wandb=disabled"]


def test_bf16_pipeline_resume_is_exact(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_pretrain(2, straight, COMMON + ["train.steps=4"])
    run_pretrain(2, resumed, COMMON + ["train.steps=2"])
    run_pretrain(2, resumed, COMMON + ["train.steps=4"])  # resumes from step 2 (run.resume=auto)
    ref, got = losses(straight), losses(resumed)
    assert len(got) == 4 and got == ref
    assert ref[-1] < ref[0]
