"""The speech decoder's mel spectrogram, in one place: what the code->mel model predicts, what the
vocoder reads, and what Griffin-Lim inverts (megaspeech.speech.speech_decoder).

    16 kHz audio -> |STFT| (n_fft 640 = 40 ms Hann window, hop 160 = 100 frames/s, centred)
    -> 80 Slaney mel bins (0-8 kHz) -> natural log, clamped at 1e-5

Not Whisper's log-mel (megaspeech.speech.audio.log_mel): that one is clamped relative to each
utterance's maximum and scaled, so it is not invertible frame by frame; this one is, and a frame
never depends on frames farther than the window.

Frame rule: a tokenizer at `frame_rate` codes/s (50 / pool, pool 1, 2, 4, 8) gets
frames_per_code = 100 / frame_rate mel frames per code (2, 4, 8, 16), i.e. SAMPLES_PER_FRAME *
frames_per_code samples (pool 4: 8 frames, 1280 samples, 80 ms); T codes <-> exactly
T * frames_per_code frames <-> T * frames_per_code * 160 samples (the audio zero-padded to that).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

SAMPLE_RATE = 16000
HOP = 160  # samples per mel frame: 100 frames/s
N_FFT = 640
N_MELS = 80
LOG_FLOOR = 1e-5
FRAMES_PER_SECOND = SAMPLE_RATE // HOP


def frames_per_code(frame_rate: float) -> int:
    """Mel frames per code of a tokenizer at `frame_rate` codes/s (must divide 100: 50, 25, 12.5, 6.25 Hz)."""
    f = FRAMES_PER_SECOND / frame_rate
    if frame_rate <= 0 or abs(f - round(f)) > 1e-9 or round(f) < 1:
        raise ValueError(f"speech decoder: a tokenizer frame rate of {frame_rate} codes/s does not divide the "
                         f"mel's {FRAMES_PER_SECOND} frames/s; use a tokenizer with pool 1, 2, 4 or 8 "
                         f"(50, 25, 12.5, 6.25 Hz)")
    return int(round(f))


@lru_cache(maxsize=2)
def mel_basis(n_mels: int = N_MELS) -> torch.Tensor:
    """Slaney mel filters float32 [n_mels, N_FFT // 2 + 1]."""
    from transformers.audio_utils import mel_filter_bank
    fb = mel_filter_bank(num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                         max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")
    return torch.from_numpy(np.ascontiguousarray(fb.T)).float()


@lru_cache(maxsize=2)
def _inverse_basis(n_mels: int = N_MELS) -> torch.Tensor:
    return torch.linalg.pinv(mel_basis(n_mels))


def _window() -> torch.Tensor:
    return torch.hann_window(N_FFT)


def stft(audio: torch.Tensor) -> torch.Tensor:
    """float32 [..., n] -> complex [..., N_FFT // 2 + 1, n // HOP + 1] (centred, reflect-padded)."""
    return torch.stft(audio, N_FFT, HOP, window=_window(), center=True, return_complex=True)


def istft(spec: torch.Tensor, length: int) -> torch.Tensor:
    """complex [..., N_FFT // 2 + 1, F] -> float32 [..., length] (the inverse of stft)."""
    return torch.istft(spec, N_FFT, HOP, window=_window(), center=True, length=length)


def log_mel_of_magnitude(mag: torch.Tensor) -> torch.Tensor:
    """|STFT| [..., N_FFT // 2 + 1, F] -> log-mel [..., N_MELS, F]."""
    return torch.log(torch.clamp(mel_basis() @ mag, min=LOG_FLOOR))


def log_mel(audio: torch.Tensor | np.ndarray, frames: int | None = None) -> torch.Tensor:
    """16 kHz float32 audio [..., n] -> log-mel float32 [..., N_MELS, frames]; frames defaults to
    ceil(n / HOP). Audio shorter than frames * HOP is zero-padded first (the frame rule above)."""
    a = torch.as_tensor(audio, dtype=torch.float32)
    frames = frames if frames is not None else -(-a.shape[-1] // HOP)
    need = frames * HOP
    a = torch.nn.functional.pad(a, (0, max(0, need - a.shape[-1])))[..., :need]
    return log_mel_of_magnitude(stft(a).abs())[..., :frames]


def inverse_mel(mel: torch.Tensor) -> torch.Tensor:
    """log-mel [..., n_mels, F] -> linear magnitude [..., N_FFT // 2 + 1, F] by the filters' pseudo-inverse,
    clamped at 0 (the magnitude Griffin-Lim starts from)."""
    return torch.clamp(_inverse_basis(mel.shape[-2]) @ torch.exp(mel.float()), min=0.0)


def with_last_frame(spec: torch.Tensor) -> torch.Tensor:
    """[..., F] frames -> [..., F + 1], the last repeated: a centred STFT of F * HOP samples has F + 1 frames."""
    return torch.cat([spec, spec[..., -1:]], dim=-1)


def consistent_phase(mag: torch.Tensor, angles: torch.Tensor, length: int, n_iter: int,
                     momentum: float = 0.99) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013, as torchaudio.transforms.GriffinLim; torchaudio is not a
    dependency): `n_iter` projections of |mag| [..., N_FFT // 2 + 1, F + 1] with unit phases `angles` onto
    consistent spectrograms of `length` samples -> the refined unit phases."""
    prev = torch.zeros_like(angles)
    for _ in range(n_iter):
        rebuilt = stft(istft(mag * angles, length))
        angles = rebuilt - prev * (momentum / (1 + momentum))
        angles = angles / (angles.abs() + 1e-16)
        prev = rebuilt
    return angles


def griffin_lim(mel: torch.Tensor, n_iter: int = 32, momentum: float = 0.99, seed: int = 0) -> torch.Tensor:
    """The no-training vocoder: log-mel [N_MELS, F] -> linear magnitude by the filters' pseudo-inverse
    (clamped at 0) -> random phases refined by consistent_phase -> float32 [F * HOP] samples."""
    mag = inverse_mel(mel)
    length = mag.shape[-1] * HOP
    mag = with_last_frame(mag)
    g = torch.Generator().manual_seed(seed)
    angles = torch.exp(2j * torch.pi * torch.rand(mag.shape, generator=g))
    return istft(mag * consistent_phase(mag, angles, length, n_iter, momentum), length)
