"""The code -> mel model of the speech decoder: two objectives in one model (model.objective).

    codes int64 [B, T] -> embedding -> ConvNeXt x code_layers (at the code rate)
    -> repeat each code frames_per_code times (+ a learned embedding of the frame's place in its code)
    -> ConvNeXt x mel_layers (100 frames/s) -> h [B, F, dim] -> linear (+ the code's template) -> mu [B, F, n_mels]

  code templates  (model.code_templates) a table of fpc x n_mels (normalised) log-mel frames per code, set
              by the trainer to the mean mel of each code over the training set before step 0 (codes
              never seen: the mean frame), and the linear output starts at zero: the model starts as
              that lookup table and the convolutions learn what context adds (the voice, co-articulation).
              Why: without it the convolutions underfit the map from 4,096 codes (docs/speech_decoder.md).

  regression  mu is the predicted (normalised) log-mel; loss L1 or L2 against the true one.
  flow        conditional flow matching (OT-CFM, Lipman et al. 2023; CosyVoice / GLM-4-Voice's decoder):
              a velocity estimator v(x_t, t | h, mu) (ConvNeXt x flow_layers, the time added to every
              block) learns u = x1 - (1 - sigma_min) x0 on x_t = (1 - (1 - sigma_min) t) x0 + t x1,
              x0 ~ N(0, I), x1 the true mel; sampled by flow_steps Euler steps from x0. mu is also
              trained to regress the mel (prior_weight), which conditions the estimator early.

Convolutions only (no attention): a frame depends on a bounded window of codes, which is what makes
streaming exact once `right_context_frames()` of look-ahead has arrived (SpeechDecoder.stream).
Mels are normalised by the corpus' mean and std (buffers set by the trainer), B x F x n_mels inside.
No speaker prompt: the voice is what the codes carry (the tokenizer's 12.5 Hz codes keep some of it).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from megaspeech.config.speech_decoding import CodeToMelConfig


class ConvNeXtBlock(nn.Module):
    """x [B, F, dim] -> x + MLP(LayerNorm(depthwise conv(x) (+ cond))), as Vocos' backbone (1-D ConvNeXt)."""

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.dw = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.up, self.down = nn.Linear(dim, 3 * dim), nn.Linear(3 * dim, dim)
        self.scale = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        y = self.dw(x.transpose(1, 2)).transpose(1, 2)
        if cond is not None:
            y = y + cond
        return x + self.scale * self.down(F.gelu(self.up(self.norm(y))))


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of flow times t float [B] in [0, 1] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
    ang = 1000.0 * t[:, None].float() * freqs[None, :]
    return F.pad(torch.cat([ang.sin(), ang.cos()], dim=1), (0, dim - 2 * half))


class CodeToMel(nn.Module):
    def __init__(self, cfg: CodeToMelConfig, codebook_size: int, frames_per_code: int, n_mels: int = 80):
        super().__init__()
        self.cfg, self.codebook_size, self.fpc, self.n_mels = cfg, codebook_size, frames_per_code, n_mels
        d = cfg.dim
        self.embed = nn.Embedding(codebook_size, d)
        self.code_blocks = nn.ModuleList(ConvNeXtBlock(d, cfg.kernel) for _ in range(cfg.code_layers))
        self.sub_frame = nn.Parameter(torch.zeros(frames_per_code, d))
        self.mel_blocks = nn.ModuleList(ConvNeXtBlock(d, cfg.kernel) for _ in range(cfg.mel_layers))
        self.norm = nn.LayerNorm(d)
        self.to_mel = nn.Linear(d, n_mels)
        if cfg.code_templates:
            self.template = nn.Embedding(codebook_size, frames_per_code * n_mels)
            nn.init.zeros_(self.template.weight)
            nn.init.zeros_(self.to_mel.weight)
            nn.init.zeros_(self.to_mel.bias)
        self.register_buffer("mel_mean", torch.zeros(()))
        self.register_buffer("mel_std", torch.ones(()))
        if cfg.objective == "flow":
            self.flow_in = nn.Linear(2 * n_mels + d, d)
            self.flow_time = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
            self.flow_blocks = nn.ModuleList(ConvNeXtBlock(d, 3) for _ in range(cfg.flow_layers))
            self.flow_out = nn.Linear(d, n_mels)

    def right_context_frames(self) -> int:
        """Mel frames after a frame that can change it (the look-ahead streaming must wait for)."""
        k = self.cfg.kernel // 2
        ctx = k * self.cfg.code_layers * self.fpc + k * self.cfg.mel_layers + self.fpc
        if self.cfg.objective == "flow":
            ctx += self.cfg.flow_steps * self.cfg.flow_layers  # kernel 3 per estimator block and step
        return ctx

    def condition(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """codes int64 [B, T] -> (h float32 [B, T * fpc, dim], mu float32 [B, T * fpc, n_mels])."""
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"speech decoder: codes must be raw codes in [0, {self.codebook_size}) (not unified "
                             f"vocab ids: subtract vocab.speech_offset); got [{int(codes.min())}, {int(codes.max())}]")
        x = self.embed(codes)
        for b in self.code_blocks:
            x = b(x)
        B, T, d = x.shape
        x = (x[:, :, None, :] + self.sub_frame[None, None]).reshape(B, T * self.fpc, d)
        for b in self.mel_blocks:
            x = b(x)
        h = self.norm(x)
        mu = self.to_mel(h)
        if self.cfg.code_templates:
            mu = mu + self.template(codes).reshape(B, T * self.fpc, self.n_mels)
        return h, mu

    @torch.no_grad()
    def set_templates(self, items: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """The code templates from utterances, (codes int64 [T], their log-mel [n_mels, T * fpc]) each
        -> each code's mean (normalised) frames; a code never seen gets the mean frame. Returns the
        number of codes seen."""
        K, f, n = self.codebook_size, self.fpc, self.n_mels
        total, count = torch.zeros(K, f * n, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
        for c, m in items:
            x = ((m - self.mel_mean) / self.mel_std).T.reshape(len(c), f * n).double()
            total.index_add_(0, c, x)
            count.index_add_(0, c, torch.ones(len(c), dtype=torch.float64))
        mean_frame = total.sum(0) / count.sum().clamp_min(1)
        seen = count > 0
        table = torch.where(seen[:, None], total / count.clamp_min(1)[:, None], mean_frame[None])
        self.template.weight.copy_(table.float())
        return int(seen.sum())

    def velocity(self, x: torch.Tensor, t: torch.Tensor, h: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """Flow velocity at x [B, F, n_mels], times t [B] -> [B, F, n_mels]."""
        y = self.flow_in(torch.cat([x, mu, h], dim=-1))
        te = self.flow_time(time_embedding(t, y.shape[-1]))[:, None, :]
        for b in self.flow_blocks:
            y = b(y, te)
        return self.flow_out(y)

    def _dist(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).abs().mean() if self.cfg.loss == "l1" else (a - b).square().mean()

    def loss(self, codes: torch.Tensor, mel: torch.Tensor, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, dict]:
        """codes int64 [B, T], true log-mel float32 [B, n_mels, T * fpc] -> (loss, named parts)."""
        x1 = ((mel - self.mel_mean) / self.mel_std).transpose(1, 2)
        h, mu = self.condition(codes)
        prior = self._dist(mu, x1)
        if self.cfg.objective == "regression":
            return prior, {"mel_loss": prior.item()}
        B = x1.shape[0]
        t = torch.rand(B, generator=generator)
        x0 = torch.randn(x1.shape, generator=generator)
        s = 1 - self.cfg.sigma_min
        xt = (1 - s * t[:, None, None]) * x0 + t[:, None, None] * x1
        fm = (self.velocity(xt, t, h, mu) - (x1 - s * x0)).square().mean()
        return fm + self.cfg.prior_weight * prior, {"flow_loss": fm.item(), "mel_loss": prior.item()}

    @torch.no_grad()
    def generate(self, codes: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """codes int64 [B, T] -> log-mel float32 [B, n_mels, T * fpc]. noise: the flow's x0 [B, F, n_mels]
        (default: zeros, the mode of the prior; ignored by regression)."""
        h, mu = self.condition(codes)
        x = mu
        if self.cfg.objective == "flow":
            x = torch.zeros_like(mu) if noise is None else noise
            n = self.cfg.flow_steps
            for i in range(n):
                t = torch.full((x.shape[0],), i / n)
                x = x + self.velocity(x, t, h, mu) / n
        return (x * self.mel_std + self.mel_mean).transpose(1, 2)
