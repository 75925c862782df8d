"""The speech decoder's neural vocoder, Vocos-style (Siuzdak 2023): log-mel -> waveform.

    log-mel [B, n_mels, F] -> conv (kernel) -> ConvNeXt x layers (at 100 frames/s, no upsampling)
    -> linear -> log-magnitude (vocoder.magnitude_prior: a correction added to the log of the mel
    filters' pseudo-inverse, the magnitude Griffin-Lim starts from; zero at initialisation) and phase
    of N_FFT // 2 + 1 bins per frame
    -> [refine_iters consistency projections of the phase, seeded by the predicted one] -> inverse STFT
    (hop 160) -> float32 [B, F * 160]

Losses, all without a discriminator (an adversarial loss would sharpen harmonics but costs more than
the CPU preset's budget): the predicted spectrum against the true STFT of the same frames (L1
log-magnitude; APNet's anti-wrapping phase losses, Ai & Ling 2023: instantaneous phase, group delay,
instantaneous frequency), and the output waveform's L1 log-mel plus a multi-resolution STFT loss
(spectral convergence + L1 log-magnitude at three resolutions). `vocoder.refine_iters` > 0 runs fast
Griffin-Lim from the predicted magnitude and phase at inference (as Deep Griffin-Lim, Masuyama et al.
2019, puts learned parts and consistency projections together); 0 is the network alone. Measured
figures: docs/speech_decoder.md. It runs faster than real time on one CPU thread: all the network's
work is at the frame rate; the inverse FFT makes the samples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megaspeech.config.speech_decoding import VocoderConfig
from megaspeech.speech.decoder_mel import (HOP, LOG_FLOOR, N_FFT, consistent_phase, inverse_mel, istft, log_mel,
                                            stft, with_last_frame)
from megaspeech.speech.decoder_model import ConvNeXtBlock

STFT_RESOLUTIONS = ((512, 128), (1024, 256), (256, 64))  # (n_fft, hop) of the multi-resolution STFT loss


class Vocoder(nn.Module):
    def __init__(self, cfg: VocoderConfig, n_mels: int = 80):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Conv1d(n_mels, cfg.dim, cfg.kernel, padding=cfg.kernel // 2)
        self.norm_in = nn.LayerNorm(cfg.dim)
        self.blocks = nn.ModuleList(ConvNeXtBlock(cfg.dim, cfg.kernel) for _ in range(cfg.layers))
        self.norm_out = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, N_FFT + 2)
        if cfg.magnitude_prior:
            with torch.no_grad():
                self.head.weight[:N_FFT // 2 + 1].zero_()
                self.head.bias[:N_FFT // 2 + 1].zero_()

    def right_context_frames(self) -> int:
        """Mel frames after a frame that change its samples (convs, each consistency projection and the
        inverse STFT's overlap)."""
        return self.cfg.kernel // 2 * (1 + self.cfg.layers) + (1 + self.cfg.refine_iters) * -(-N_FFT // HOP)

    def spectrum(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log-mel [B, n_mels, F] -> (log-magnitude, phase), each [B, N_FFT // 2 + 1, F]."""
        x = self.norm_in(self.embed(mel).transpose(1, 2))
        for b in self.blocks:
            x = b(x)
        logmag, phase = self.head(self.norm_out(x)).transpose(1, 2).chunk(2, dim=1)
        if self.cfg.magnitude_prior:
            logmag = logmag + torch.log(torch.clamp(inverse_mel(mel), min=LOG_FLOOR))
        return logmag.clamp(max=6.0), phase

    def forward(self, mel: torch.Tensor, refine_iters: int | None = None) -> torch.Tensor:
        """log-mel float32 [B, n_mels, F] -> waveform float32 [B, F * HOP]. refine_iters: consistency
        projections (default cfg.refine_iters; training uses 0, the network alone)."""
        logmag, phase = self.spectrum(mel)
        iters = self.cfg.refine_iters if refine_iters is None else refine_iters
        return _wave(logmag, phase, mel.shape[-1] * HOP, iters)

    def loss(self, mel: torch.Tensor, audio: torch.Tensor, mel_weight: float = 1.0, stft_weight: float = 1.0,
             mag_weight: float = 1.0, phase_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
        """mel [B, n_mels, F] of audio float32 [B, F * HOP] -> (loss, named parts)."""
        logmag, phase = self.spectrum(mel)
        true = stft(audio)[..., :mel.shape[-1]]
        mag = F.l1_loss(logmag, true.abs().clamp_min(1e-5).log())
        ph = phase_losses(phase, true.angle())
        out = _wave(logmag, phase, audio.shape[-1])
        mel_l1 = (log_mel(out, mel.shape[-1]) - mel).abs().mean()
        sc = mag_r = 0.0
        for n_fft, hop in STFT_RESOLUTIONS:
            w = torch.hann_window(n_fft)
            s_hat = torch.stft(out, n_fft, hop, window=w, return_complex=True).abs().clamp_min(1e-7)
            s = torch.stft(audio, n_fft, hop, window=w, return_complex=True).abs().clamp_min(1e-7)
            sc = sc + torch.linalg.norm(s - s_hat) / torch.linalg.norm(s).clamp_min(1e-7)
            mag_r = mag_r + F.l1_loss(s_hat.log(), s.log())
        stft_l = (sc + mag_r) / len(STFT_RESOLUTIONS)
        total = mel_weight * mel_l1 + stft_weight * stft_l + mag_weight * mag + phase_weight * ph
        return total, {"voc_mel_l1": mel_l1.item(), "voc_stft": stft_l.item(), "voc_mag": mag.item(),
                       "voc_phase": ph.item()}


def _wave(logmag: torch.Tensor, phase: torch.Tensor, length: int, refine_iters: int = 0) -> torch.Tensor:
    """Predicted log-magnitude and phase [B, bins, F] -> `length` samples, after `refine_iters` consistency
    projections of the phase."""
    mag, angles = with_last_frame(torch.exp(logmag)), with_last_frame(torch.exp(1j * phase))
    if refine_iters:
        angles = consistent_phase(mag, angles, length, refine_iters)
    return istft(mag * angles, length)


def _anti_wrap(x: torch.Tensor) -> torch.Tensor:
    """|x - 2 pi round(x / 2 pi)|: the distance of a phase difference from 0 on the circle."""
    return (x - 2 * torch.pi * torch.round(x / (2 * torch.pi))).abs()


def phase_losses(phase: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """APNet's phase losses on [B, bins, F]: instantaneous phase, group delay (difference along frequency)
    and instantaneous angular frequency (along time), each anti-wrapped; their sum."""
    d = phase - true
    ip = _anti_wrap(d).mean()
    gd = _anti_wrap(torch.diff(phase, dim=1) - torch.diff(true, dim=1)).mean()
    iaf = _anti_wrap(torch.diff(phase, dim=2) - torch.diff(true, dim=2)).mean()
    return ip + gd + iaf
