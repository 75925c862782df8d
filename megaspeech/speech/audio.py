"""Audio I/O for the speech tokenizer: decode, resample to 16 kHz, Whisper log-mel features.

The frame-rate rule lives here so every caller (training, tokenizing, evaluation) agrees:
Whisper's mel has 100 frames/s (hop 160 at 16 kHz); its conv stem halves that to 50 Hz; the
tokenizer pools `pool` encoder frames into one token (tokenizer.pool: 1, 2, 4, 8 = 50, 25, 12.5,
6.25 Hz), so one token covers 320 * pool samples (pool 4: 1280 samples, 80 ms, 12.5 Hz). An
utterance of `n` samples gets exactly `ceil(n / (320 * pool))` tokens; the last token covers the
tail of the audio plus Whisper's padding (pool 4: 10 s -> 125 tokens, 10.01 s -> 126).
"""
from __future__ import annotations

import io
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
HOP = 160  # mel hop (100 Hz)
SAMPLES_PER_TOKEN = 1280  # 4 encoder frames x 2 (conv stride) x 160 samples (the default pool 4)
POOLS = {1: 50.0, 2: 25.0, 4: 12.5, 8: 6.25}  # tokenizer.pool -> tokens per second
MAX_SECONDS = 30.0  # Whisper's window; longer audio must be cut by the caller
MAX_SAMPLES = int(MAX_SECONDS * SAMPLE_RATE)


class AudioError(ValueError):
    """Audio that cannot be decoded or used; the message names the file and the fix."""


def samples_per_token(pool: int = 4) -> int:
    """16 kHz samples per token: pool encoder frames x 2 (conv stride) x 160 (mel hop)."""
    return 2 * HOP * pool


def num_tokens(n_samples: int, pool: int = 4) -> int:
    """Number of tokens for `n_samples` of 16 kHz audio: ceil(n / (320 * pool)) (pool 4: 12.5 Hz)."""
    return max(1, math.ceil(n_samples / samples_per_token(pool)))


def max_token_samples(pool: int = 4) -> int:
    """The longest audio (samples) one pass reads: whole tokens inside Whisper's 30 s window
    (pool 8: 187 tokens = 29.92 s; pools 1-4 divide 30 s exactly)."""
    return MAX_SAMPLES // samples_per_token(pool) * samples_per_token(pool)


def resample(audio: np.ndarray, sr: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (scipy), float32 mono in and out."""
    if sr == target:
        return audio.astype(np.float32, copy=False)
    from scipy.signal import resample_poly
    g = math.gcd(int(sr), int(target))
    return resample_poly(audio, target // g, int(sr) // g).astype(np.float32)


def decode_audio(data: bytes | str | Path, name: str | None = None) -> np.ndarray:
    """Decode wav/flac/ogg (soundfile) bytes or a path to mono float32 at 16 kHz, shape [n]."""
    import soundfile as sf
    label = name or (str(data) if not isinstance(data, bytes) else "<bytes>")
    try:
        src = io.BytesIO(data) if isinstance(data, bytes) else str(data)
        audio, sr = sf.read(src, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types; all mean "cannot decode"
        raise AudioError(f"{label}: cannot decode audio ({e}); convert it to wav or flac "
                         f"(e.g. ffmpeg -i IN -ar 16000 -ac 1 OUT.flac)") from None
    if audio.shape[0] == 0:
        raise AudioError(f"{label}: audio is empty (0 samples); drop the file")
    audio = audio.mean(axis=1)
    if not np.isfinite(audio).all():
        raise AudioError(f"{label}: audio holds NaN/inf samples; re-encode the file")
    return resample(audio, sr)


def encode_flac(audio: np.ndarray, sr: int = SAMPLE_RATE) -> bytes:
    """float32 [n] in [-1, 1] -> FLAC bytes (16-bit), for audio shards."""
    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


@lru_cache(maxsize=4)
def feature_extractor(n_mels: int = 80):
    from transformers import WhisperFeatureExtractor
    return WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLE_RATE, hop_length=HOP,
                                   chunk_length=int(MAX_SECONDS), n_fft=400)


def log_mel(audio: np.ndarray, n_mels: int = 80, name: str = "<audio>", frames: int | None = None) -> np.ndarray:
    """Whisper log-mel of one utterance as Whisper computes it on its 30 s zero-padded window.

    Returns float32 [n_mels, 3000], or only the first `frames` frames. With `frames` the STFT
    runs on a window just long enough (frames * 160 + 400 samples of zero padding): every STFT
    frame < `frames` sees the same samples as in the 30 s window, and the log clamp uses the
    same maximum (padding frames are never the maximum of speech), so the result equals the
    first `frames` frames of the 30 s features at a fraction of the cost.
    Computed per utterance (never on a batch) so an utterance's features, hence its tokens,
    do not depend on what else is in the batch.
    """
    if audio.shape[0] > MAX_SAMPLES:
        raise AudioError(f"{name}: {audio.shape[0] / SAMPLE_RATE:.1f} s is longer than Whisper's "
                         f"{MAX_SECONDS:.0f} s window; cut it into segments first")
    fe = feature_extractor(n_mels)
    window = MAX_SAMPLES if frames is None else min(MAX_SAMPLES, max(frames * HOP + 400, audio.shape[0]))
    out = fe(audio, sampling_rate=SAMPLE_RATE, return_tensors="np", max_length=window).input_features[0]
    return out[:, :frames].astype(np.float32) if frames is not None else out.astype(np.float32)
