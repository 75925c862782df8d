"""Learning-rate schedule: linear warmup, then linear / cosine decay to min_lr (or constant)."""
from __future__ import annotations

import math

import torch

from megaspeech.config.schema import OptimConfig


def lr_lambda(cfg: OptimConfig, total_steps: int):
    decay_steps = cfg.decay_steps or max(total_steps - cfg.warmup_steps, 1)
    floor = cfg.min_lr / cfg.lr

    def fn(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.decay == "constant":
            return 1.0
        frac = min((step - cfg.warmup_steps) / decay_steps, 1.0)
        if cfg.decay == "linear":
            return 1.0 - (1.0 - floor) * frac
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))

    return fn


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, total_steps: int, fused: bool = False,
                    lr_mult: dict[str, float] | None = None):
    """AdamW without weight decay on norms and biases; returns (optimizer, LambdaLR). `fused`: torch's
    single-kernel AdamW (the trainer asks for it on CUDA; the parameters may still be on the host
    here, DeepSpeed moves them and the same Parameter objects, before the first step); elsewhere the
    multi-tensor (foreach) form. `lr_mult`: parameter-name prefix -> learning-rate multiplier (the
    schedule scales every group alike, so a group keeps its multiple of optim.lr throughout)."""
    lr_mult = lr_mult or {}
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            mult = next((m for prefix, m in lr_mult.items() if name.startswith(prefix)), 1.0)
            groups.setdefault((mult, p.ndim >= 2), []).append(p)
    params = [{"params": ps, "lr": cfg.lr * mult, "lr_mult": mult, "weight_decay": cfg.weight_decay if decay else 0.0}
              for (mult, decay), ps in sorted(groups.items(), key=lambda kv: (kv[0][0] != 1.0, kv[0][0], not kv[0][1]))]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None,
                            foreach=None if fused else True)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total_steps))
