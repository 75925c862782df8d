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


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, total_steps: int, fused: bool = False):
    """AdamW without weight decay on norms and biases; returns (optimizer, LambdaLR). `fused`: torch's
    single-kernel AdamW (the trainer asks for it on CUDA; the parameters may still be on the host
    here, DeepSpeed moves them and the same Parameter objects, before the first step)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total_steps))
