"""The speech decoder's neural vocoder, Vocos-style (Siuzdak 2023): log-mel -> waveform.

    log-mel [B, n_mels, F] -> conv (kernel) -> ConvNeXt x layers (at 100 frames/s, no upsampling)
    -> linear -> log-magnitude and phase of N_FFT // 2 + 1 bins per frame -> inverse STFT (hop 160)
    -> float32 [B, F * 160]

Trained on the true mel with an L1 log-mel loss (of its output, recomputed) plus a multi-resolution
STFT loss (spectral convergence + L1 log-magnitude at three resolutions). No discriminator: an
adversarial loss would sharpen harmonics but costs more than the CPU preset's budget (measured
figures: docs/speech_decoder.md). It runs faster than real time on one CPU thread: all the work is
at the frame rate; the inverse FFT makes the samples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megaspeech.config.speech_decoding import VocoderConfig
from megaspeech.speech.decoder_mel import HOP, N_FFT, istft, log_mel
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

    def right_context_frames(self) -> int:
        """Mel frames after a frame that change its samples (convs + the inverse STFT's overlap)."""
        return self.cfg.kernel // 2 * (1 + self.cfg.layers) + N_FFT // HOP

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel float32 [B, n_mels, F] -> waveform float32 [B, F * HOP]."""
        x = self.norm_in(self.embed(mel).transpose(1, 2))
        for b in self.blocks:
            x = b(x)
        logmag, phase = self.head(self.norm_out(x)).transpose(1, 2).chunk(2, dim=1)  # [B, N_FFT // 2 + 1, F] each
        spec = torch.exp(logmag.clamp(max=6.0)) * torch.exp(1j * phase)
        # a centred STFT of F * HOP samples has F + 1 frames: the last frame repeats
        spec = torch.cat([spec, spec[..., -1:]], dim=-1)
        return istft(spec, mel.shape[-1] * HOP)

    def loss(self, mel: torch.Tensor, audio: torch.Tensor, mel_weight: float = 1.0, stft_weight: float = 1.0
             ) -> tuple[torch.Tensor, dict]:
        """mel [B, n_mels, F] of audio float32 [B, F * HOP] -> (loss, named parts)."""
        out = self(mel)
        mel_l1 = (log_mel(out, mel.shape[-1]) - mel).abs().mean()
        sc = mag = 0.0
        for n_fft, hop in STFT_RESOLUTIONS:
            w = torch.hann_window(n_fft)
            s_hat = torch.stft(out, n_fft, hop, window=w, return_complex=True).abs().clamp_min(1e-7)
            s = torch.stft(audio, n_fft, hop, window=w, return_complex=True).abs().clamp_min(1e-7)
            sc = sc + torch.linalg.norm(s - s_hat) / torch.linalg.norm(s).clamp_min(1e-7)
            mag = mag + F.l1_loss(s_hat.log(), s.log())
        stft = (sc + mag) / len(STFT_RESOLUTIONS)
        return mel_weight * mel_l1 + stft_weight * stft, {"voc_mel_l1": mel_l1.item(), "voc_stft": stft.item()}
