"""Masked next-token loss normalized by the global number of loss tokens, with a per-modality split."""
from __future__ import annotations

import torch

from megaspeech.kernels.linear_cross_entropy import linear_cross_entropy
from megaspeech.parallel.layers import token_losses

MODALITIES = ("text", "speech")


class LMLoss:
    """Callable (logits [S, B, V/tp], (labels, loss_mask, modality) [B, S]) -> scalar to backward.

    DeepSpeed divides the loss by grad-accumulation steps and averages gradients over data-parallel
    ranks; `begin_step` sets the scale that turns each micro-batch's *sum* into its share of the
    mean over every loss token of the global batch, so any layout computes the same gradient.
    Detached per-modality sums and counts are kept for reporting, accumulated on the loss's device
    (float64 [2 * modalities]: sum, count per modality) so no micro-batch waits for the host.

    Fused mode (`bind_head`, train.fused_loss): the model's Head returns its matmul input
    [S, B, H] instead of logits and the loss is megaspeech.kernels.linear_cross_entropy of it with the head
    weight, in token chunks (same function; no [S, B, V] fp32 logits).
    """

    def __init__(self, tp: int):
        self.tp = tp
        self.scale = 1.0
        self.sums = torch.zeros(2 * len(MODALITIES), dtype=torch.float64)
        self.head = None
        self.chunk_tokens = None

    def bind_head(self, head, chunk_tokens: int | None = None) -> None:
        """Compute the loss from `head`'s input and weight (head.fused_loss is set here)."""
        head.fused_loss = True
        self.head, self.chunk_tokens = head, chunk_tokens

    def begin_step(self, global_tokens: float, grad_accum: int, dp: int) -> None:
        self.scale = grad_accum * dp / max(global_tokens, 1.0)
        self.sums.zero_()

    def __call__(self, output: torch.Tensor, target) -> torch.Tensor:
        labels, mask, modality = target
        if self.head is None:
            tok = token_losses(output, labels, self.tp) * mask
            loss = tok.sum() * self.scale
        else:
            loss, tok = self._fused(output, labels, mask)
        self._accumulate(tok.detach(), mask, modality)
        return loss

    def _fused(self, hidden: torch.Tensor, labels, mask):
        from megatron.core import parallel_state as ps
        S, B, H = hidden.shape
        weight = self.head.out.weight
        group = ps.get_tensor_model_parallel_group() if self.tp > 1 else None
        # tokens in [S, B] order, the hidden's; mask * scale is each token's share of the loss
        loss, ce = linear_cross_entropy(hidden.reshape(S * B, H), weight, labels.t().reshape(-1),
                                        (mask.t() * self.scale).reshape(-1), group, self.chunk_tokens)
        return loss, ce.view(S, B).t() * mask

    def _accumulate(self, tok: torch.Tensor, mask: torch.Tensor, modality: torch.Tensor) -> None:
        if self.sums.device != tok.device:
            self.sums = self.sums.to(tok.device)
        idx = modality.reshape(-1) * 2
        self.sums.index_add_(0, idx, tok.reshape(-1).double())
        self.sums.index_add_(0, idx + 1, mask.reshape(-1).double())
