"""What speech tokenizer training (megaspeech.speech.tokenizer_training) prepares before its first
step: the distillation teacher (the original, frozen Whisper encoder) and its per-item cache, the
per-item cache of pooled pre-VQ features, and the data-dependent init of the bottleneck (projection
and codebook) from real pooled frames."""
from __future__ import annotations

import copy

import numpy as np
import torch

from megaspeech.speech.audio import log_mel
from megaspeech.speech.audio_batches import AudioBatches, audio_chunks
from megaspeech.speech.tokenizer import features


@torch.no_grad()
def pooled_cache(model, data: AudioBatches) -> list[torch.Tensor]:
    """Per training item: pooled pre-VQ features [T_i, D] (the training input when the layers below
    the VQ are frozen, and the codebook's init data)."""
    model.eval()
    out = []
    for audios in audio_chunks(data):
        pooled, keep = model.pooled(*features(audios, model.conv1.in_channels, model.pool))
        out.extend(p[k].clone() for p, k in zip(pooled, keep))
    return out


class Teacher:
    """The distillation target: the original Whisper encoder (un-pooled, un-quantized, as the base ASR
    runs it) on each utterance's 30 s window, frozen. A copy taken before any weight is loaded or
    trained, since the tokenizer reuses (and trains) Whisper's own encoder modules."""

    def __init__(self, whisper):
        self.encoder = copy.deepcopy(whisper.model.model.encoder).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, audios: list[np.ndarray]) -> torch.Tensor:
        """16 kHz utterances -> float32 [B, 1500, D]."""
        n_mels = self.encoder.config.num_mel_bins
        mel30 = torch.from_numpy(np.stack([log_mel(a, n_mels) for a in audios]))
        return self.encoder(mel30).last_hidden_state


def teacher_cache(teacher: Teacher, data: AudioBatches) -> list[torch.Tensor]:
    """Per training item (clean audio): the teacher's states, float16 [1500, D]."""
    return [t.half() for audios in audio_chunks(data) for t in teacher(audios)]


@torch.no_grad()
def init_bottleneck(model, vecs: torch.Tensor, pos: torch.Tensor, seed: int, ema_epochs: int) -> None:
    """Data-dependent init of the bottleneck from pooled pre-VQ frames vecs [N, D] at token positions
    pos [N]: the projection (PCA, position offsets), the codebook from distinct frames, then
    `ema_epochs` EMA passes (online k-means) over them. Training starts from it; the pooling benchmark
    measures what it alone costs."""
    model.eval()
    model.init_projection(vecs, pos)
    vecs = model.code_input(vecs, pos)
    gen = torch.Generator().manual_seed(seed)
    model.init_codebook(vecs, gen)
    model.vq.train()
    for _ in range(ema_epochs):
        for chunk in vecs[torch.randperm(len(vecs), generator=gen)].split(4096):
            model.vq(chunk)
    model.vq.eval()


@torch.no_grad()
def sampled_frames(model, data: AudioBatches, n_batches: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Pooled pre-VQ frames and their token positions from the first `n_batches` batches of epoch 0
    (the codebook's init data when no whole-data cache is made)."""
    vecs, pos = [], []
    for audios, _ in data.peek(n_batches):
        pooled, keep = model.pooled(*features(audios, model.conv1.in_channels, model.pool))
        vecs.append(pooled[keep])
        pos.append(model.positions(keep))
    return vecs, pos
