"""Masked next-token loss normalized by the global number of loss tokens, with a per-modality split."""
from __future__ import annotations

import torch

from megaspeech.parallel.layers import token_losses

MODALITIES = ("text", "speech")


class LMLoss:
    """Callable (logits [S, B, V/tp], (labels, loss_mask, modality) [B, S]) -> scalar to backward.

    DeepSpeed divides the loss by grad-accumulation steps and averages gradients over data-parallel
    ranks; `begin_step` sets the scale that turns each micro-batch's *sum* into its share of the
    mean over every loss token of the global batch, so any layout computes the same gradient.
    Detached per-modality sums and counts are kept for reporting.
    """

    def __init__(self, tp: int):
        self.tp = tp
        self.scale = 1.0
        self.sums = torch.zeros(2 * len(MODALITIES), dtype=torch.float64)

    def begin_step(self, global_tokens: float, grad_accum: int, dp: int) -> None:
        self.scale = grad_accum * dp / max(global_tokens, 1.0)
        self.sums.zero_()

    def __call__(self, logits: torch.Tensor, target) -> torch.Tensor:
        labels, mask, modality = target
        tok = token_losses(logits, labels, self.tp) * mask
        with torch.no_grad():
            idx = modality.reshape(-1) * 2
            sums = torch.zeros(2 * len(MODALITIES), dtype=torch.float64, device=tok.device)
            sums.index_add_(0, idx, tok.detach().reshape(-1).double())
            sums.index_add_(0, idx + 1, mask.reshape(-1).double())
            self.sums += sums.cpu()
        return tok.sum() * self.scale
