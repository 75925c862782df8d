"""The DeepSpeed config, derived from the pre-training YAML (never kept by hand)."""
from __future__ import annotations

from megaspeech.config.schema import PretrainConfig


def deepspeed_config(cfg: PretrainConfig, world_size: int) -> dict:
    t, p = cfg.train, cfg.parallel
    return {
        "train_batch_size": t.global_batch,
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum_steps(world_size),
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": p.zero_stage},
        "bf16": {"enabled": t.precision == "bf16"},
        # Accumulate bf16 gradients in fp32 across micro-batches (Megatron's main_grad behaviour).
        **({"data_types": {"grad_accum_dtype": "fp32"}} if t.precision == "bf16" else {}),
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # our metrics module does the logging
        "wall_clock_breakdown": False,
        "dump_state": False,
    }
