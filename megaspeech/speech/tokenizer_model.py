"""The supervised speech tokenizer (GLM-4-Voice / arXiv 2411.17607): a pre-trained Whisper encoder
split at `split_layer`, average pooling 50 Hz -> 12.5 Hz, a VQ bottleneck (fused kernel, EMA,
commitment 10.0), then the remaining encoder layers and the Whisper decoder trained on ASR.

    log-mel [B, n_mels, 8T] -> conv stem -> 50 Hz [B, 4T, D] -> layers[:split] -> avg-pool 4
    -> [B, T, D] -> VQ -> codes int64 [B, T] / quantized [B, T, D] -> layers[split:] -> norm
    -> Whisper decoder (cross-attention over the T quantized frames) -> transcript

`unpool` picks what the layers above the VQ see:
  "none"   the T quantized 12.5 Hz frames (GLM-4-Voice: the upper layers and the decoder are
           trained to read 12.5 Hz frames);
  "repeat" each quantized vector repeated `pool` times back to 50 Hz (frames past the utterance
           masked), plus the difference between each 50 Hz frame's sinusoidal position embedding
           and its group's mean (the pooled vector carries the mean); after the utterance, up to
           Whisper's 30 s window (1500 frames), the states of silence (layers[:split] run once on
           a constant log-mel of value `silence_mel`, the padding Whisper sees), so the
           pre-trained upper layers and decoder see the 30 s layout they were trained on. Without
           that tail the frozen decoder finds no end of speech and loops. Codes are unchanged
           (still 12.5 Hz, from the utterance's own frames); only the reading side differs.

`code_dim` (factorized codes): the VQ quantizes vq_in(pooled), a learned code_dim-dim projection
(PCA-initialised), and the layers above read vq_out(code vector); without it both are identities.

`position_free` codes: Whisper's position embeddings leave each pooled frame's time index in its
features (measured: per-position means explain ~half the variance of the 32-dim code inputs), so a
codebook also spends its codes on *when*. With it, a learned offset per 12.5 Hz token position
(vq_pos, initialised to the per-position mean code input) is subtracted before the lookup and added
back after it: a code is the content; the position comes from the token's index, as in the LM.

Frame rule (megaspeech.speech.audio): an utterance of n samples has T = ceil(n / (320 * pool)) tokens
(pool 4: 1280 samples, 12.5 Hz; pool is a config value: 1, 2, 4, 8 = 50, 25, 12.5, 6.25 Hz).
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

from megaspeech.kernels.vq import VectorQuantizer
from megaspeech.speech.asr import Fallback, additive_mask, run_decoder, transcribe_tokens


def sample_codes(z: torch.Tensor, codebook: torch.Tensor, temperature: float,
                 generator: torch.Generator | None = None, k: int = 8) -> torch.Tensor:
    """A code per row of z [N, D], drawn among its k nearest codes (codebook [K, D]) with probability
    proportional to exp(-(d - d_min) / (temperature * d_min)), d = squared distance: codes a few
    percent farther than the nearest are likely, much farther ones are not -> int64 [N]."""
    d = torch.cdist(z.float(), codebook.float()).square()
    d, idx = d.topk(min(k, codebook.shape[0]), dim=1, largest=False)  # ascending
    logits = -(d - d[:, :1]) / (temperature * d[:, :1].clamp_min(1e-12))
    pick = torch.multinomial(logits.softmax(1), 1, generator=generator)
    return idx.gather(1, pick)[:, 0]


class SpeechTokenizer(nn.Module):
    """Wraps a transformers WhisperForConditionalGeneration (its modules are reused, not copied)."""

    def __init__(self, whisper_model, split_layer: int, codebook_size: int, pool: int = 4,
                 decay: float = 0.99, commitment_weight: float = 10.0, dead_code_threshold: float = 0.0,
                 unpool: str = "none", silence_mel: float = -0.75, code_dim: int | None = None,
                 position_free: bool = False):
        super().__init__()
        if unpool not in ("none", "repeat"):
            raise ValueError(f"tokenizer.unpool={unpool!r}: must be 'none' or 'repeat'")
        self.unpool, self.silence_mel = unpool, silence_mel
        self._silence = None  # cached [1500, D] silence states (eval mode only)
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
        d = enc.config.d_model
        # factorized codes: quantize a learned low-dimensional projection (set by init_projection)
        self.vq_in = nn.Linear(d, code_dim) if code_dim else nn.Identity()
        self.vq_out = nn.Linear(code_dim, d) if code_dim else nn.Identity()
        self.vq = VectorQuantizer(codebook_size, code_dim or d, decay=decay,
                                  commitment_weight=commitment_weight, dead_code_threshold=dead_code_threshold)
        n_tok = self.embed_positions.weight.shape[0] // pool  # token positions in Whisper's 30 s window
        self.vq_pos = nn.Parameter(torch.zeros(n_tok, code_dim or d)) if position_free else None
        self.frames_per_token = pool * enc.conv1.stride[0] * enc.conv2.stride[0]  # mel frames per token

    # encoder up to the bottleneck ---------------------------------------------------------
    def _stem(self, mel: torch.Tensor) -> torch.Tensor:
        """Whisper's conv stem + position embeddings: mel [B, n_mels, 2F] -> [B, F, D] at 50 Hz."""
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        return x + self.embed_positions.weight[:x.shape[1]]

    def frames50(self, feats: torch.Tensor, n_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """50 Hz hidden states after layers[:split]: feats [B, n_mels, >= 8T], n_tokens int64 [B]
        -> (x float32 [B, 4T, D], keep50 bool [B, 4T]), T = max(n_tokens)."""
        T = int(n_tokens.max())
        x = feats[:, :, :T * self.frames_per_token]
        # zero mel frames past each utterance's end: the conv stem (kernel 3) then sees at the
        # edge exactly the zero padding it sees when the utterance is alone
        real = torch.arange(x.shape[-1])[None, :] < (n_tokens * self.frames_per_token)[:, None]
        x = self._stem(x * real[:, None, :])  # [B, 4T, D] at 50 Hz
        keep50 = torch.arange(x.shape[1])[None, :] < (n_tokens * self.pool)[:, None]
        mask = additive_mask(keep50, x.dtype)
        for layer in self.pre_layers:
            x = layer(x, mask)
        return x, keep50

    def pooled(self, feats: torch.Tensor, n_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Continuous 12.5 Hz features before the VQ.

        feats float32 [B, n_mels, >= 8 * max(n_tokens)] (per-utterance 30 s log-mel);
        n_tokens int64 [B] -> (pooled float32 [B, T, D], keep bool [B, T]), T = max(n_tokens).
        """
        x, _ = self.frames50(feats, n_tokens)
        pooled = F.avg_pool1d(x.transpose(1, 2), self.pool, self.pool).transpose(1, 2)  # [B, T, D]
        keep = torch.arange(pooled.shape[1])[None, :] < n_tokens[:, None]
        return pooled, keep

    def silence_states(self) -> torch.Tensor:
        """layers[:split] over 30 s of constant log-mel `silence_mel` -> float32 [1500, D]."""
        if self._silence is not None and not self.training:
            return self._silence
        n = self.embed_positions.weight.shape[0]
        with torch.no_grad():
            x = torch.full((1, self.conv1.in_channels, 2 * n), self.silence_mel)
            x = self._stem(x)
            for layer in self.pre_layers:
                x = layer(x, None)
        self._silence = None if self.training else x[0]
        return x[0]

    def post(self, q: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Remaining encoder layers over quantized frames. q [B, T, D], keep bool [B, T]
        -> (encoder states [B, T', D], keep' bool [B, T']); T' = T, or max(1500, 4T) with unpool=repeat."""
        if self.unpool == "repeat":
            T = q.shape[1]
            pos = self.embed_positions.weight[:T * self.pool]
            # the pooled vector holds the group's mean position embedding: restore each frame's own
            pos_delta = pos - pos.reshape(T, self.pool, -1).mean(1).repeat_interleave(self.pool, 0)
            q = q.repeat_interleave(self.pool, 1) + pos_delta.to(q.dtype)
            keep = keep.repeat_interleave(self.pool, 1)
            sil = self.silence_states().to(q.dtype)
            n = max(sil.shape[0], q.shape[1])
            if n > q.shape[1]:
                q = torch.cat([q, q.new_zeros(q.shape[0], n - q.shape[1], q.shape[2])], 1)
                keep = torch.cat([keep, keep.new_zeros(keep.shape[0], n - keep.shape[1])], 1)
            tail = sil[:n].expand(q.shape[0], -1, -1) if n <= sil.shape[0] else q.new_zeros(q.shape)
            # each utterance: its own frames, then silence up to 30 s (beyond 30 s: no tail)
            real = keep
            q = torch.where(real[..., None], q, tail)
            keep = real | (torch.arange(n) < sil.shape[0])[None, :]
        mask = additive_mask(keep, q.dtype)
        for layer in self.post_layers:
            q = layer(q, mask)
        return self.enc_norm(q), keep

    # the bottleneck ----------------------------------------------------------------------------
    def code_input(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """What the codebook quantizes: pooled frames x [N, D] at token positions pos int64 [N]
        -> [N, code dim] (vq_in(x), less vq_pos[pos] for position-free codes)."""
        z = self.vq_in(x)
        return z if self.vq_pos is None else z - self.vq_pos[pos]

    def code_output(self, q: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Inverse side: code vectors q [N, code dim] at positions pos [N] -> [N, D] for the upper layers."""
        return self.vq_out(q if self.vq_pos is None else q + self.vq_pos[pos])

    @staticmethod
    def positions(keep: torch.Tensor) -> torch.Tensor:
        """Token index of each real frame: keep bool [B, T] -> int64 [keep.sum()] (row-major, as x[keep])."""
        return torch.arange(keep.shape[1]).expand_as(keep)[keep]

    # public API ----------------------------------------------------------------------------
    def forward(self, feats, n_tokens, text_in, text_out, asr_weight: float = 1.0):
        """ASR training step. text_in/text_out int64 [B, S] (decoder inputs / targets, -100 = ignore).

        Returns (total loss, dict of float metrics, codes int64 [B, T], keep bool [B, T]).
        """
        return self.forward_pooled(*self.pooled(feats, n_tokens), text_in, text_out, asr_weight=asr_weight)

    def forward_pooled(self, pooled, keep, text_in, text_out, teacher=None, asr_weight: float = 1.0,
                       distill_weight: float = 0.0, code_temperature: float = 0.0,
                       generator: torch.Generator | None = None):
        """Training step from pre-VQ features (pooled [B, T, D], keep bool [B, T]); as forward().

        loss = asr_weight * CE(decoder over the post-VQ states) + commitment
             + distill_weight * MSE(post-VQ encoder states, teacher) over real frames; CE is over the
        items with a transcript (a row of text_out all -100 is untranscribed: distillation only; a
        batch without any has no CE term and no "ce" log), where
        teacher float32 [B, 1500, D] is the original encoder's output on the same audio
        (megaspeech.speech.tokenizer_training.Teacher; the post-VQ states must have the 30 s layout,
        so distillation needs unpool=repeat). asr_weight=0
        skips the decoder entirely. code_temperature > 0 (training): the layers above read a code
        sampled near each frame's nearest (sample_codes, drawn from `generator`) instead of the
        nearest, so they learn to read the codes a voice they never heard lands on; the codebook's
        EMA, the commitment and the returned codes stay the nearest.
        """
        # only real frames reach the VQ (padding would pull the EMA codebook towards silence)
        pos = self.positions(keep)
        z = self.code_input(pooled[keep], pos)
        q_flat, codes_flat, commit = self.vq(z)
        if code_temperature > 0 and self.training:
            picked = sample_codes(z.detach(), self.vq.codebook, code_temperature, generator)
            q_flat = self.vq.codebook[picked].to(z.dtype) + (z - z.detach())  # straight-through, as the VQ
        q = torch.zeros_like(pooled)
        q[keep] = self.code_output(q_flat, pos)
        codes = torch.zeros(keep.shape, dtype=torch.long)
        codes[keep] = codes_flat
        enc, enc_keep = self.post(q, keep)
        loss, logs = commit, {"commit": commit.item()}
        rows = (text_out != -100).any(1) if asr_weight > 0 else None  # items with a transcript
        if asr_weight > 0 and rows.any():
            logits = self.proj_out(run_decoder(self.decoder, text_in[rows], enc[rows], enc_keep[rows]))
            ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), text_out[rows].reshape(-1),
                                 ignore_index=-100)
            loss = loss + asr_weight * ce
            logs["ce"] = ce.item()
        if distill_weight > 0:
            if teacher is None or teacher.shape[:2] != enc.shape[:2]:
                raise ValueError("distillation needs teacher states [B, 1500, D] and tokenizer.unpool=repeat")
            mse = F.mse_loss(enc[enc_keep], teacher[enc_keep].to(enc.dtype))
            loss = loss + distill_weight * mse
            logs["distill"] = mse.item()
        return loss, logs, codes, keep

    @torch.no_grad()
    def tokenize(self, feats: torch.Tensor, n_tokens: torch.Tensor) -> list[torch.Tensor]:
        """feats [B, n_mels, >= 8T], n_tokens int64 [B] -> list of B code tensors int64 [n_tokens[b]]."""
        pooled, keep = self.pooled(feats, n_tokens)
        # never an EMA update while tokenizing
        _, codes, _ = self._eval_vq(self.code_input(pooled[keep], self.positions(keep)))
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
        q = torch.zeros(*keep.shape, self.embed_positions.weight.shape[1])
        q[keep] = self.code_output(self.vq.codebook[torch.cat(list(codes)).long()].float(), self.positions(keep))
        return self.post(q, keep)

    @torch.no_grad()
    def decode_tokens(self, whisper, codes: list[torch.Tensor], max_new_tokens: int = 200,
                      fallback: Fallback | None = None) -> list[list[int]]:
        """Codes -> Whisper transcript token ids per utterance through the quantized path (greedy, or
        with Whisper's temperature fallback: megaspeech.speech.asr.transcribe_tokens)."""
        enc, keep = self.codes_to_encoder_states(codes)
        return transcribe_tokens(whisper, enc, keep, max_new_tokens, fallback)

    def unquantized(self, pooled: torch.Tensor) -> torch.Tensor:
        """The bottleneck without the codebook lookup (the VQ bypassed): pooled [..., D] -> [..., D]
        (position-free codes: the offset subtracted before the lookup is added back, so it cancels)."""
        return self.vq_out(self.vq_in(pooled))

    @torch.no_grad()
    def init_projection(self, vectors: torch.Tensor, pos: torch.Tensor | None = None) -> None:
        """Data-dependent init of the bottleneck from pooled features `vectors` [N, D] at token
        positions pos int64 [N]. Factorized codes: vq_in/vq_out = the top code_dim principal
        components (projection and its reconstruction), so training starts from the best linear
        code_dim-dim bottleneck. Position-free codes: vq_pos[t] = the mean of vq_in(x) over the
        frames at position t, shrunk towards the overall mean by 16 pseudo-frames. Without either, a no-op."""
        if not isinstance(self.vq_in, nn.Identity):
            self._init_pca(vectors)
        if self.vq_pos is not None:
            if pos is None:
                raise ValueError("position-free codes: init_projection needs the token positions")
            z = self.vq_in(vectors).double()
            n = torch.zeros(self.vq_pos.shape[0], dtype=torch.float64).index_add_(0, pos, torch.ones_like(z[:, 0]))
            total = torch.zeros(self.vq_pos.shape, dtype=torch.float64).index_add_(0, pos, z)
            k = 16.0  # shrink rarely seen positions towards the overall mean (a few frames are content)
            self.vq_pos.copy_((total + k * z.mean(0)) / (n + k)[:, None])

    def _init_pca(self, vectors: torch.Tensor) -> None:
        x = vectors.double()
        mu = x.mean(0)
        _, evecs = torch.linalg.eigh((x - mu).T @ (x - mu) / len(x))  # ascending
        u = evecs[:, -self.vq.dim:].flip(1)  # [D, code_dim], largest first
        self.vq_in.weight.copy_(u.T)
        self.vq_in.bias.copy_(-(u.T @ mu))
        self.vq_out.weight.copy_(u)
        self.vq_out.bias.copy_(mu)

    @torch.no_grad()
    def init_codebook(self, vectors: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Data-dependent init: codebook rows = distinct random rows of `vectors` [N, code dim]
        (already through vq_in; N >= K) with EMA count 1, so the first EMA steps refine real
        clusters instead of random points."""
        K = self.vq.codebook_size
        if vectors.shape[0] < K:
            raise ValueError(f"init_codebook: {vectors.shape[0]} vectors for {K} codes; "
                             f"give more data (train.codebook_init_batches) or a smaller codebook")
        pick = vectors[torch.randperm(vectors.shape[0], generator=generator)[:K]].float()
        self.vq.embed.copy_(pick)
        self.vq.ema_sum.copy_(pick)
        self.vq.ema_count.fill_(1.0)
