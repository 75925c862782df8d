"""LaSyn (arXiv 2310.05374): a latent synthesizer text -> the speech encoder's latent space, so that
text-only corpora can feed the bridge model (megaspeech/bridge/model.py) as if they were speech.

Text is read as the CTC character units (speech_lm.ctc_units). Both forms share a text encoder (unit
embeddings + convolutions) and a duration predictor (log frames per unit):
  projection  the paper's fixed-projection form: unit states expanded by their durations (length
              regulator), refined by a convolution, projected to the latent dimension; MSE to the real latents
  diffusion   a small denoiser conditioned on the expanded unit states (DDPM training on the noise,
              deterministic DDIM sampling from seeded noise)
Latents are standardised per dimension with statistics of the training latents (buffers), so both
forms work in a unit-scale space; `synthesize` returns latents in the encoder's own scale.

Alignment: the duration targets are frames per unit from a CTC forced alignment of the real latents
(megaspeech/bridge/align.py, what launch/train_lasyn.py uses by default), or, given none, each
utterance's frames split evenly over its units (`uniform_durations`: the total length is right, the
timing within the utterance is not).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from megaspeech.config.load import check
from megaspeech.fs import atomic_path
from megaspeech.bridge.model import CTC_CHARS


@dataclass
class LaSynConfig:
    kind: Literal["projection", "diffusion"] = "projection"
    latent_dim: int = 384
    hidden: int = 192
    layers: int = 3
    kernel: int = 5
    diffusion_steps: int = 100  # training noise levels (diffusion)
    sample_steps: int = 10  # DDIM steps at synthesis (diffusion)
    duration_weight: float = 0.1

    def __post_init__(self):
        check(self.kind in ("projection", "diffusion"), "synth.kind", f"{self.kind!r}: use projection or diffusion")
        check(self.kernel % 2 == 1, "synth.kernel", "must be odd")
        check(1 <= self.sample_steps <= self.diffusion_steps, "synth.sample_steps", "must be in [1, synth.diffusion_steps]")


class ConvStack(nn.Module):
    """Residual (LayerNorm, Conv1d, GELU) blocks over [B, T, H], padding frames kept at zero."""

    def __init__(self, hidden: int, layers: int, kernel: int):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.convs = nn.ModuleList(nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2) for _ in range(layers))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        for norm, conv in zip(self.norms, self.convs):
            x = x + F.gelu(conv(norm(x).transpose(1, 2)).transpose(1, 2)) * keep[..., None]
        return x * keep[..., None]


def pad_units(units: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(u) for u in units])
    out = torch.zeros(len(units), int(lens.max()), dtype=torch.long)
    for i, u in enumerate(units):
        out[i, :len(u)] = torch.tensor(u, dtype=torch.long)
    return out, lens


def uniform_durations(unit_lengths: torch.Tensor, frame_lengths: torch.Tensor, U: int) -> torch.Tensor:
    """Frames per unit when each utterance's frames are split evenly over its units: int64 [B, U]."""
    j = torch.arange(U + 1)[None, :].clamp(max=unit_lengths[:, None])
    edges = torch.div(j * frame_lengths[:, None], unit_lengths.clamp(min=1)[:, None], rounding_mode="floor")
    return edges[:, 1:] - edges[:, :-1]


def expand(h: torch.Tensor, durations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Length regulator: h [B, U, H], durations int [B, U] -> ([B, T, H] each unit repeated, lengths [B])."""
    lengths = durations.sum(1)
    T = max(int(lengths.max()), 1)
    out = h.new_zeros(h.shape[0], T, h.shape[2])
    for i in range(h.shape[0]):
        x = torch.repeat_interleave(h[i], durations[i], dim=0)
        out[i, :x.shape[0]] = x
    return out, lengths


class LatentSynthesizer(nn.Module):
    def __init__(self, cfg: LaSynConfig):
        super().__init__()
        self.cfg, H, D = cfg, cfg.hidden, cfg.latent_dim
        self.dim = D
        self.embed = nn.Embedding(len(CTC_CHARS) + 1, H)
        self.text = ConvStack(H, cfg.layers, cfg.kernel)
        self.duration = nn.Linear(H, 1)
        self.register_buffer("mean", torch.zeros(D))
        self.register_buffer("std", torch.ones(D))
        if cfg.kind == "projection":
            self.post = ConvStack(H, 1, cfg.kernel)
            self.out = nn.Linear(H, D)
        else:
            self.inp = nn.Linear(D, H)
            self.t_embed = nn.Sequential(nn.Linear(H, H), nn.GELU(), nn.Linear(H, H))
            self.denoiser = ConvStack(H, cfg.layers + 1, cfg.kernel)
            self.out = nn.Linear(H, D)
            betas = torch.linspace(1e-4, 0.05, cfg.diffusion_steps)
            self.register_buffer("alpha_bar", torch.cumprod(1 - betas, 0))

    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp(min=1e-4))

    def encode_text(self, units: torch.Tensor, unit_lengths: torch.Tensor):
        keep = torch.arange(units.shape[1])[None, :] < unit_lengths[:, None]
        h = self.text(self.embed(units) * keep[..., None], keep)
        return h, self.duration(h).squeeze(-1), keep  # log frames per unit

    def _t_features(self, t: torch.Tensor) -> torch.Tensor:
        half = self.cfg.hidden // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
        ang = t.float()[:, None] * freqs[None, :]
        return self.t_embed(torch.cat([ang.sin(), ang.cos()], -1))

    def _eps(self, x_t: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.inp(x_t) + cond + self._t_features(t)[:, None, :]
        return self.out(self.denoiser(x, keep))

    def loss(self, units: torch.Tensor, unit_lengths: torch.Tensor, latents: torch.Tensor,
             frame_lengths: torch.Tensor, generator: torch.Generator | None = None,
             durations: torch.Tensor | None = None) -> torch.Tensor:
        """Training loss on (text units [B, U], real latents [B, T, D]) pairs: latent term + duration
        term. durations int [B, U]: frames per unit (summing to frame_lengths); None: uniform."""
        h, logd, ukeep = self.encode_text(units, unit_lengths)
        dur = uniform_durations(unit_lengths, frame_lengths, units.shape[1]) if durations is None else durations
        cond, lengths = expand(h, dur)
        T = cond.shape[1]
        keep = (torch.arange(T)[None, :] < lengths[:, None]).float()
        z = (latents[:, :T] - self.mean) / self.std * keep[..., None]
        n = keep.sum() * self.dim
        if self.cfg.kind == "projection":
            pred = self.out(self.post(cond, keep))
            lat_loss = ((pred - z) ** 2 * keep[..., None]).sum() / n
        else:
            t = torch.randint(0, self.cfg.diffusion_steps, (units.shape[0],), generator=generator)
            noise = torch.randn(z.shape, generator=generator)
            ab = self.alpha_bar[t][:, None, None]
            x_t = ab.sqrt() * z + (1 - ab).sqrt() * noise
            lat_loss = ((self._eps(x_t, cond, t, keep) - noise) ** 2 * keep[..., None]).sum() / n
        d_target = torch.log(dur.float().clamp(min=1))
        dur_loss = (((logd - d_target) ** 2) * ukeep).sum() / ukeep.sum()
        return lat_loss + self.cfg.duration_weight * dur_loss

    @torch.no_grad()
    def synthesize(self, units: list[list[int]], seed: int = 0,
                   durations: list[list[int]] | None = None) -> list[torch.Tensor]:
        """Character units per text -> latents [T_i, D] in the encoder's scale (deterministic per seed);
        frames per unit from the duration predictor unless given."""
        u, ul = pad_units(units)
        h, logd, ukeep = self.encode_text(u, ul)
        dur = (torch.exp(logd).round().clamp(min=1).long()) * ukeep.long()
        if durations is not None:
            dur = pad_units(durations)[0]
        cond, lengths = expand(h, dur)
        keep = (torch.arange(cond.shape[1])[None, :] < lengths[:, None]).float()
        if self.cfg.kind == "projection":
            z = self.out(self.post(cond, keep))
        else:
            g = torch.Generator().manual_seed(int(seed))
            z = torch.randn(cond.shape[0], cond.shape[1], self.dim, generator=g)
            ts = torch.linspace(self.cfg.diffusion_steps - 1, 0, self.cfg.sample_steps).round().long()
            for k, t in enumerate(ts):  # DDIM, eta = 0
                ab = self.alpha_bar[t]
                eps = self._eps(z, cond, t.repeat(z.shape[0]), keep)
                x0 = (z - (1 - ab).sqrt() * eps) / ab.sqrt()
                ab_prev = self.alpha_bar[ts[k + 1]] if k + 1 < len(ts) else torch.tensor(1.0)
                z = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
        x = z * self.std + self.mean
        return [x[i, :int(lengths[i])] for i in range(x.shape[0])]


def save_synthesizer(model: LatentSynthesizer, path: str | Path, meta: dict | None = None) -> None:
    """Config + tensors only (loaded with weights_only=True), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"config": asdict(model.cfg), "state": model.state_dict(), "meta": meta or {}}, tmp)


def load_synthesizer(path: str | Path) -> LatentSynthesizer:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"LaSyn synthesizer {path} not found (bridge.lasyn); train one with "
                                f"launch/train_lasyn.py --config configs/lasyn_tiny.yaml")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = LatentSynthesizer(LaSynConfig(**blob["config"]))
    model.load_state_dict(blob["state"])
    return model.eval()
