"""Speech-to-LM bridge (arXiv 2312.03668, HuBERT+GPT): shortens a speech encoder's frames to about
one vector per text unit and maps them into the LM's embedding space.

    frames h [B, T, D_speech] (50 Hz encoder states) --ctc_head--> logits [B, T, V_ctc]
      kind "ctc":  runs of equal argmax label -> one vector each (blank runs dropped), the
                   probability-weighted mean of the run's frames (megaspeech.kernels.ctc_compress), trained
                   with a CTC loss on the transcript so the runs follow the text units
      kind "conv": a strided Conv1d (the paper's downsampling alternative; no CTC head)
    -> projector (Linear, GELU, Linear) -> speech embeddings [B, T', H_lm], lengths [B]

`splice` places the speech embeddings in front of the text token embeddings, the layout the LM
then reads ([S, B, H], DecoderLM.forward(embeds=...)). The continuous-speech pipeline (LaSyn's
latent synthesizer feeds the same bridge from text) builds on this module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from megaspeech.kernels.ctc_compress import ctc_compress


@dataclass
class BridgeOutput:
    embeds: torch.Tensor  # [B, T', H_lm], zero past lengths
    lengths: torch.Tensor  # int64 [B]
    ctc_logits: torch.Tensor | None  # [B, T, V_ctc] (kind "ctc")


class SpeechBridge(nn.Module):
    def __init__(self, speech_dim: int, lm_dim: int, kind: Literal["ctc", "conv"] = "ctc",
                 ctc_vocab: int = 0, blank: int = 0, reduce: Literal["mean", "weighted"] = "weighted",
                 stride: int = 4, hidden: int | None = None, blank_init: float | None = None):
        super().__init__()
        if kind not in ("ctc", "conv"):
            raise ValueError(f"bridge.kind={kind!r}: use 'ctc' or 'conv'")
        if kind == "ctc" and not 0 <= blank < ctc_vocab:
            raise ValueError(f"bridge: blank={blank} must be a label of the CTC vocabulary "
                             f"(ctc_vocab={ctc_vocab}: the transcript units + the blank, from bridge.ctc_units)")
        self.kind, self.blank, self.reduce, self.stride = kind, blank, reduce, stride
        if kind == "ctc":
            self.ctc_head = nn.Linear(speech_dim, ctc_vocab)
            if blank_init is not None:  # the blank's initial probability (the other logits start near 0)
                if not 0.0 < blank_init < 1.0:
                    raise ValueError(f"bridge.ctc_blank_init={blank_init}: a probability in (0, 1), or null")
                with torch.no_grad():
                    self.ctc_head.bias[blank] = math.log(blank_init / (1 - blank_init) * (ctc_vocab - 1))
        else:
            self.down = nn.Conv1d(speech_dim, speech_dim, stride, stride)
        hidden = hidden or lm_dim
        self.proj = nn.Sequential(nn.Linear(speech_dim, hidden), nn.GELU(), nn.Linear(hidden, lm_dim))

    def forward(self, h: torch.Tensor, lengths: torch.Tensor, unit_embeds: torch.Tensor | None = None) -> BridgeOutput:
        """h [B, T, D_speech], lengths int [B] (valid frames) -> BridgeOutput. unit_embeds [V_ctc, H_lm]
        (kind ctc; bridge.ctc_embed): each run's mean CTC posterior times these rows (the LM's own
        embeddings of the units, zero for the blank) is added to the projected features."""
        logits, post = None, None  # post: each run's mean expected unit embedding
        if self.kind == "ctc":
            logits = self.ctc_head(h)
            soft = logits.float().softmax(-1)
            # labels from the argmax; weights = the argmax label's probability (differentiable,
            # so the LM loss also reaches the CTC head)
            probs = soft.amax(-1) if self.reduce == "weighted" else None
            # pooling is linear in the frames: the run's mean posterior x rows == the mean of each frame's
            # expected embedding, which is H wide instead of V (V is the LM's vocabulary for ctc_units=lm)
            x = h if unit_embeds is None else torch.cat([h, soft.to(h.dtype) @ unit_embeds.to(h.dtype)], -1)
            x, lengths = ctc_compress(x, logits.detach().argmax(-1), lengths, self.blank,
                                      mode="remove_blank", reduce=self.reduce, probs=probs)
            if unit_embeds is not None:
                x, post = x[..., :h.shape[-1]], x[..., h.shape[-1]:]
        else:
            x = self.down(h.transpose(1, 2)).transpose(1, 2)
            lengths = torch.div(lengths, self.stride, rounding_mode="floor").clamp(max=x.shape[1])
        keep = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        y = self.proj(x)
        if post is not None:
            y = y + post.to(y.dtype)
        return BridgeOutput(y * keep[..., None], lengths, logits)

    def ctc_loss(self, out: BridgeOutput, frame_lengths: torch.Tensor, targets: torch.Tensor,
                 target_lengths: torch.Tensor) -> torch.Tensor:
        """CTC loss of the head (targets int [B, U] padded, units never the blank), mean over the batch."""
        if out.ctc_logits is None:
            raise ValueError("bridge.kind='conv' has no CTC head")
        logp = out.ctc_logits.float().log_softmax(-1).transpose(0, 1)  # [T, B, V]
        return F.ctc_loss(logp, targets, frame_lengths, target_lengths, blank=self.blank,
                          reduction="mean", zero_infinity=True)


def splice(speech: BridgeOutput, text_embeds: torch.Tensor, text_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: its speech embeddings, then its text embeddings, left-aligned, zero-padded.

    speech.embeds [B, T', H], text_embeds [B, U, H], text_lengths int [B]
    -> (embeds [S, B, H] with S = max(len_speech + len_text), lengths int64 [B]).
    """
    b, _, hdim = text_embeds.shape
    total = speech.lengths + text_lengths.to(speech.lengths.device)
    s = int(total.max()) if b else 0
    # built [S, B, H] contiguous: a transposed view would make torch.matmul expand every frozen
    # (requires_grad=False) weight of the LM once per position instead of folding to one GEMM (a frozen
    # SmolLM2 bridge micro-batch took ~20x as long as a fully trained one that way: benchmarks/bridge_step.py)
    out = text_embeds.new_zeros(s, b, hdim)
    for i in range(b):  # B small copies; the gradient reaches both sources
        n, m = int(speech.lengths[i]), int(text_lengths[i])
        out[:n, i] = speech.embeds[i, :n]
        out[n:n + m, i] = text_embeds[i, :m]
    return out, total
