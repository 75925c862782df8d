"""Training-time audio augmentation for the speech tokenizer: speed, pitch, additive noise,
reverberation, 8 kHz telephone band, lossy codec. TTS voices are clean and studio-flat; real
recordings are not, so the tokenizer sees the channel variety it will meet (Kaldi-style speed
perturbation, simulated rooms and telephone lines, as ASR recipes do).

Deterministic: every choice comes from the generator the caller passes, which the training loader
seeds with (run seed, epoch, item index), so the same item in the same epoch gets the same audio
whatever the batch, process or restart: resume stays bit-exact. Each epoch draws new variants.

    rng = np.random.default_rng([seed, epoch, item])
    y = augment(x, rng, cfg)           # float32 [n] 16 kHz -> float32 [m] 16 kHz (m != n under speed)
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from megaspeech.config.load import check
from megaspeech.speech.audio import SAMPLE_RATE, resample

EFFECTS = ("speed", "pitch", "reverb", "noise", "telephone", "codec")  # applied in this order


@dataclass
class AugmentConfig:
    enabled: bool = False
    # probability of each effect per item (independent draws)
    p_speed: float = 0.5
    p_pitch: float = 0.3
    p_reverb: float = 0.3
    p_noise: float = 0.4
    p_telephone: float = 0.15
    p_codec: float = 0.2
    speed: tuple[float, float] = (0.9, 1.1)  # tempo and pitch together (resampling), as Kaldi's 3-way perturbation
    pitch_semitones: tuple[float, float] = (-3.0, 3.0)  # pitch only (phase vocoder keeps the duration)
    rt60: tuple[float, float] = (0.15, 0.8)  # seconds, exponentially decaying noise room response
    snr_db: tuple[float, float] = (5.0, 30.0)  # white / pink / brown noise
    codec_quality: tuple[float, float] = (0.5, 0.99)  # libsndfile compression level: higher = fewer bits

    def __post_init__(self):
        for name in ("p_speed", "p_pitch", "p_reverb", "p_noise", "p_telephone", "p_codec"):
            check(0.0 <= getattr(self, name) <= 1.0, f"augment.{name}", "must be in [0, 1]")
        check(0.5 <= self.speed[0] <= self.speed[1] <= 2.0, "augment.speed", "need 0.5 <= lo <= hi <= 2")
        check(self.rt60[0] > 0 and self.rt60[0] <= self.rt60[1], "augment.rt60", "need 0 < lo <= hi")
        check(self.snr_db[0] <= self.snr_db[1], "augment.snr_db", "need lo <= hi")
        check(0 <= self.codec_quality[0] <= self.codec_quality[1] <= 1, "augment.codec_quality",
              "need 0 <= lo <= hi <= 1")


def speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Play ~`factor` times faster (tempo and pitch together): band-limited FFT resampling between
    two fast FFT lengths (2,3,5,7,11-smooth: the factor moves by < 0.5%; a polyphase filter for ratios like 100/98
    ran at 9 s of audio/s here, an FFT of a prime length slower still). float32 [n] -> [~n/factor]."""
    from scipy.fft import irfft, next_fast_len, rfft
    n = len(x)
    L = next_fast_len(n)
    M = next_fast_len(int(round(L / factor)))
    X = rfft(x, n=L)
    K = M // 2 + 1
    Y = np.zeros(K, np.complex128)
    k = min(K, len(X))
    Y[:k] = X[:k]
    if k == len(X) and L % 2 == 0 and K > k - 1:  # Nyquist bin of the shorter signal counts once
        Y[k - 1] *= 0.5
    y = irfft(Y, n=M) * (M / L)
    return y[:int(round(n * M / L))].astype(np.float32)


def time_stretch(x: np.ndarray, rate: float, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """Phase-vocoder time stretch (rate > 1: shorter), pitch unchanged. float32 [n] -> [~n / rate]."""
    win = np.hanning(n_fft).astype(np.float32)
    pad = np.concatenate([np.zeros(n_fft // 2, np.float32), x, np.zeros(n_fft, np.float32)])
    frames = np.lib.stride_tricks.sliding_window_view(pad, n_fft)[::hop] * win
    S = np.fft.rfft(frames, axis=1)  # [F, n_fft/2+1]
    steps = np.arange(0, S.shape[0] - 1, rate)
    omega = 2 * np.pi * hop * np.arange(S.shape[1]) / n_fft  # expected phase advance per hop
    phase = np.angle(S[0])
    out = np.zeros((len(steps), S.shape[1]), np.complex64)
    for i, t in enumerate(steps):
        j, f = int(t), t - int(t)
        mag = (1 - f) * np.abs(S[j]) + f * np.abs(S[j + 1])
        out[i] = mag * np.exp(1j * phase)
        dphi = np.angle(S[j + 1]) - np.angle(S[j]) - omega
        phase = phase + omega + (dphi - 2 * np.pi * np.round(dphi / (2 * np.pi)))
    y = np.zeros(len(steps) * hop + n_fft, np.float32)
    norm = np.zeros_like(y)
    for i, fr in enumerate(np.fft.irfft(out, n=n_fft, axis=1).astype(np.float32)):
        y[i * hop:i * hop + n_fft] += fr * win
        norm[i * hop:i * hop + n_fft] += win ** 2
    y = y / np.maximum(norm, 1e-3)
    return y[n_fft // 2:n_fft // 2 + int(round(len(x) / rate))]


def pitch_shift(x: np.ndarray, semitones: float) -> np.ndarray:
    """Shift pitch by `semitones`, same duration: resample (pitch + tempo) then stretch back."""
    y = speed(x, 2.0 ** (semitones / 12.0))  # higher and shorter
    y = time_stretch(y, len(y) / max(len(x), 1))[:len(x)]
    return np.pad(y, (0, len(x) - len(y))) if len(y) < len(x) else y


def reverb(x: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room response: direct path + exponentially decaying noise tail."""
    from scipy.signal import fftconvolve
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    h = rng.standard_normal(n).astype(np.float32) * np.exp(-6.9 * t / rt60).astype(np.float32)  # -60 dB at rt60
    h[:int(0.002 * SAMPLE_RATE)] = 0.0  # first reflections arrive after ~2 ms
    h *= 0.5 / max(1e-6, float(np.sqrt((h ** 2).sum())))
    h[0] = 1.0
    y = fftconvolve(x, h)[:len(x)].astype(np.float32)
    return y * (_rms(x) / max(_rms(y), 1e-6))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


def noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white (0), pink (1) or brown (2) noise at `snr_db` below the signal's RMS."""
    colour = int(rng.integers(3))
    w = rng.standard_normal(len(x))
    if colour:
        spec = np.fft.rfft(w)
        f = np.maximum(np.arange(len(spec)), 1.0)
        w = np.fft.irfft(spec / f ** (0.5 * colour), n=len(x))
    w = w / max(_rms(w), 1e-9) * _rms(x) * 10 ** (-snr_db / 20)
    return (x + w).astype(np.float32)


def telephone(x: np.ndarray) -> np.ndarray:
    """Narrowband phone line: 300-3400 Hz band, 8 kHz sampling, G.711 mu-law (8 bit), back to 16 kHz."""
    from scipy.signal import butter, sosfilt
    sos = butter(4, [300, 3400], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    y = resample(sosfilt(sos, x).astype(np.float32), SAMPLE_RATE, 8000)
    peak = max(float(np.abs(y).max()), 1e-6)
    mu = 255.0
    c = np.sign(y / peak) * np.log1p(mu * np.abs(y / peak)) / np.log1p(mu)
    c = np.round((c + 1) * 127.5) / 127.5 - 1  # 8-bit code
    y = np.sign(c) * ((1 + mu) ** np.abs(c) - 1) / mu * peak
    return resample(y.astype(np.float32), 8000)[:len(x)]


def codec(x: np.ndarray, fmt: str, quality: float) -> np.ndarray:
    """Encode to MP3 or Ogg Vorbis at libsndfile compression level `quality`, decode, same length."""
    import soundfile as sf
    buf = io.BytesIO()
    sub = {"MP3": "MPEG_LAYER_III", "OGG": "VORBIS"}[fmt]
    sf.write(buf, np.clip(x, -1, 1), SAMPLE_RATE, format=fmt, subtype=sub, compression_level=quality)
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32")
    y = y[:len(x)]
    return np.pad(y, (0, len(x) - len(y))) if len(y) < len(x) else y


def draw(rng: np.random.Generator, cfg: AugmentConfig) -> dict:
    """The effects and parameters for one item (all random draws happen here, in a fixed order)."""
    u = rng.random(len(EFFECTS))
    p = [cfg.p_speed, cfg.p_pitch, cfg.p_reverb, cfg.p_noise, cfg.p_telephone, cfg.p_codec]
    params = {"speed": round(float(rng.uniform(*cfg.speed)), 2),
              "pitch": float(rng.uniform(*cfg.pitch_semitones)),
              "reverb": float(rng.uniform(*cfg.rt60)),
              "noise": float(rng.uniform(*cfg.snr_db)),
              "telephone": True,
              "codec": ("MP3" if rng.random() < 0.5 else "OGG", float(rng.uniform(*cfg.codec_quality)))}
    return {e: params[e] for e, ui, pi in zip(EFFECTS, u, p) if ui < pi}


def augment(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """One item's augmented audio (float32 16 kHz mono); x itself is never modified."""
    plan = draw(rng, cfg)
    sub = np.random.default_rng(rng.integers(1 << 62))  # noise/room draws, after the plan's
    y = x.astype(np.float32, copy=True)
    if "speed" in plan and not math.isclose(plan["speed"], 1.0):
        y = speed(y, plan["speed"])
    if "pitch" in plan:
        y = pitch_shift(y, plan["pitch"])
    if "reverb" in plan:
        y = reverb(y, plan["reverb"], sub)
    if "noise" in plan:
        y = noise(y, plan["noise"], sub)
    if "telephone" in plan:
        y = telephone(y)
    peak = float(np.abs(y).max()) if len(y) else 0.0
    if peak > 0.99:  # keep the level in range (a codec would clip it)
        y = y * (0.99 / peak)
    if "codec" in plan:
        y = codec(y, *plan["codec"])
    return y.astype(np.float32)
