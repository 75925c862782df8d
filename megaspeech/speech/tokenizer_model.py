"""The supervised speech tokenizer (GLM-4-Voice / arXiv 2411.17607): a pre-trained Whisper encoder
split at `split_layer`, average pooling 50 Hz -> 12.5 Hz, a VQ bottleneck (fused kernel, EMA,
commitment 10.0), then the remaining encoder layers and the Whisper decoder trained on ASR.

    log-mel [B, n_mels, 8T] -> conv stem -> 50 Hz [B, 4T, D] -> layers[:split] -> avg-pool 4
    -> [B, T, D] -> VQ -> codes int64 [B, T] / quantized [B, T, D] -> layers[split:] -> norm
    -> Whisper decoder (cross-attention over the T quantized frames) -> transcript

Frame rule (megaspeech.speech.audio): an utterance of n samples has T = ceil(n / 1280) tokens.
Each utterance's log-mel is computed on its own 30 s padded window (as Whisper); the model keeps
only the first 8T mel frames, so tokens cover the real audio (the last token also sees up to
79 ms of Whisper's padding) and never the 30 s of silence. Inside a batch, frames past an
utterance's own length are masked out of attention and never pooled into its tokens, so an
utterance gets the same codes alone or batched.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels.vq import VectorQuantizer
from megaspeech.speech.asr import additive_mask, greedy_decode, run_decoder


class SpeechTokenizer(nn.Module):
    """Wraps a transformers WhisperForConditionalGeneration (its modules are reused, not copied)."""

    def __init__(self, whisper_model, split_layer: int, codebook_size: int, pool: int = 4,
                 decay: float = 0.99, commitment_weight: float = 10.0, dead_code_threshold: float = 0.0):
        super().__init__()
        enc = whisper_model.model.encoder
        n = len(enc.layers)
        if not 0 < split_layer <= n:
            raise ValueError(f"tokenizer.split_layer={split_layer}: must be in [1, {n}] for this "
                             f"{n}-layer Whisper encoder")
        self.split_layer, self.pool = split_layer, pool
        self.conv1, self.conv2, self.embed_positions = enc.conv1, enc.conv2, enc.embed_positions
        self.pre_layers = nn.ModuleList(enc.layers[:split_layer])
        self.post_layers = nn.ModuleList(enc.layers[split_layer:])
        self.enc_norm = enc.layer_norm
        self.decoder = whisper_model.model.decoder
        self.proj_out = whisper_model.proj_out  # tied to decoder.embed_tokens
        self.vq = VectorQuantizer(codebook_size, enc.config.d_model, decay=decay,
                                  commitment_weight=commitment_weight, dead_code_threshold=dead_code_threshold)
        self.frames_per_token = pool * enc.conv1.stride[0] * enc.conv2.stride[0]  # mel frames per token

    # encoder up to the bottleneck ---------------------------------------------------------
    def pooled(self, feats: torch.Tensor, n_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Continuous 12.5 Hz features before the VQ.

        feats float32 [B, n_mels, >= 8 * max(n_tokens)] (per-utterance 30 s log-mel);
        n_tokens int64 [B] -> (pooled float32 [B, T, D], keep bool [B, T]), T = max(n_tokens).
        """
        T = int(n_tokens.max())
        x = feats[:, :, :T * self.frames_per_token]
        # zero mel frames past each utterance's end: the conv stem (kernel 3) then sees at the
        # edge exactly the zero padding it sees when the utterance is alone
        real = torch.arange(x.shape[-1])[None, :] < (n_tokens * self.frames_per_token)[:, None]
        x = x * real[:, None, :]
        x = F.gelu(self.conv2(F.gelu(self.conv1(x)))).transpose(1, 2)  # [B, 4T, D] at 50 Hz
        x = x + self.embed_positions.weight[:x.shape[1]]
        keep50 = torch.arange(x.shape[1])[None, :] < (n_tokens * self.pool)[:, None]
        mask = additive_mask(keep50, x.dtype)
        for layer in self.pre_layers:
            x = layer(x, mask)
        pooled = F.avg_pool1d(x.transpose(1, 2), self.pool, self.pool).transpose(1, 2)  # [B, T, D]
        keep = torch.arange(T)[None, :] < n_tokens[:, None]
        return pooled, keep

    def post(self, q: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Remaining encoder layers over quantized frames. q [B, T, D], keep bool [B, T] -> [B, T, D]."""
        mask = additive_mask(keep, q.dtype)
        for layer in self.post_layers:
            q = layer(q, mask)
        return self.enc_norm(q)

    # public API ----------------------------------------------------------------------------
    def forward(self, feats, n_tokens, text_in, text_out):
        """ASR training step. text_in/text_out int64 [B, S] (decoder inputs / targets, -100 = ignore).

        Returns (total loss, dict of float metrics, codes int64 [B, T], keep bool [B, T]).
        """
        return self.forward_pooled(*self.pooled(feats, n_tokens), text_in, text_out)

    def forward_pooled(self, pooled, keep, text_in, text_out):
        """ASR training step from pre-VQ features (pooled [B, T, D], keep bool [B, T]); as forward()."""
        # only real frames reach the VQ (padding would pull the EMA codebook towards silence)
        q_flat, codes_flat, commit = self.vq(pooled[keep])
        q = torch.zeros_like(pooled)
        q[keep] = q_flat
        codes = torch.zeros(keep.shape, dtype=torch.long)
        codes[keep] = codes_flat
        enc = self.post(q, keep)
        logits = self.proj_out(run_decoder(self.decoder, text_in, enc, keep))
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), text_out.reshape(-1), ignore_index=-100)
        loss = ce + commit
        return loss, {"ce": ce.item(), "commit": commit.item()}, codes, keep

    @torch.no_grad()
    def tokenize(self, feats: torch.Tensor, n_tokens: torch.Tensor) -> list[torch.Tensor]:
        """feats [B, n_mels, >= 8T], n_tokens int64 [B] -> list of B code tensors int64 [n_tokens[b]]."""
        pooled, keep = self.pooled(feats, n_tokens)
        _, codes, _ = self._eval_vq(pooled[keep])  # never an EMA update while tokenizing
        return list(codes.split(n_tokens.tolist()))

    def _eval_vq(self, x):
        was = self.vq.training
        self.vq.eval()
        try:
            return self.vq(x)
        finally:
            self.vq.train(was)

    @torch.no_grad()
    def codes_to_encoder_states(self, codes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """List of int64 [T_b] code sequences -> (encoder states [B, T, D], keep bool [B, T]) via the codebook."""
        lens = torch.tensor([len(c) for c in codes])
        keep = torch.arange(int(lens.max()))[None, :] < lens[:, None]
        q = torch.zeros(*keep.shape, self.vq.dim)
        q[keep] = self.vq.codebook[torch.cat(list(codes)).long()].float()
        return self.post(q, keep), keep

    @torch.no_grad()
    def decode_tokens(self, whisper, codes: list[torch.Tensor], max_new_tokens: int = 200) -> list[list[int]]:
        """Codes -> Whisper transcript token ids per utterance (greedy, through the quantized path)."""
        enc, keep = self.codes_to_encoder_states(codes)
        return greedy_decode(whisper, enc, keep, max_new_tokens)

    @torch.no_grad()
    def init_codebook(self, vectors: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Data-dependent init: codebook rows = distinct random rows of `vectors` [N, D] (N >= K)
        with EMA count 1, so the first EMA steps refine real clusters instead of random points."""
        K = self.vq.codebook_size
        if vectors.shape[0] < K:
            raise ValueError(f"init_codebook: {vectors.shape[0]} vectors for {K} codes; "
                             f"give more data (train.codebook_init_batches) or a smaller codebook")
        pick = vectors[torch.randperm(vectors.shape[0], generator=generator)[:K]].float()
        self.vq.embed.copy_(pick)
        self.vq.ema_sum.copy_(pick)
        self.vq.ema_count.fill_(1.0)
