"""Decoder-only LM of the Llama / Qwen2 / Mistral / GLM family: RMSNorm, RoPE (optionally Llama-3.1
scaled), SwiGLU, GQA, optional QKV bias.

No parallelism code lives here. Every linear / embedding comes from a `LayerFactory` (see
megaspeech/parallel/layers.py): plain torch layers at TP=1, megatron-core tensor-parallel layers
at TP>1 — so head and FFN counts below are *per tensor-parallel rank* (`f.tp`).

Activations are sequence-first, [S, B, H] (megatron's layout: sequence parallelism splits dim 0).
The model is a list of layers `[Embedding, Block x L, Head]`, so the same classes build a plain
`DecoderLM` (pipeline=1) and a DeepSpeed `PipelineModule` (pipeline>1).

Fused QKV layout, per KV group g: [q heads of g (num_heads/num_kv_heads), k_g, v_g] x head_dim rows;
a TP split on dim 0 then hands each rank whole groups.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import megaspeech.kernels.rope as kernels_rope
from megaspeech.kernels.rmsnorm import rms_norm
from megaspeech.kernels.swiglu import swiglu
from megaspeech.config.schema import ModelConfig
from megaspeech.model.attention import BlockMask, attention_mask, document_mask, flex_causal_attention  # noqa: F401

try:  # optional GPU path; computes the same causal attention as SDPA
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - CPU machines
    flash_attn_func = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)  # fp32 math; fused Triton kernel on CUDA


def rope_inv_freq(rot_dim: int, theta: float, scaling: tuple | None = None, device=None) -> torch.Tensor:
    """Inverse frequencies [rot_dim // 2] (fp32). `scaling` (RopeScaling.key()): Llama-3.1's
    (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings), computed as
    transformers' _compute_llama3_parameters: long wavelengths divided by factor, short ones kept,
    the band between interpolated."""
    inv = 1.0 / theta ** (torch.arange(0, rot_dim, 2, device=device, dtype=torch.float32) / rot_dim)
    if scaling is None:
        return inv
    factor, low, high, old_len = scaling
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


@functools.lru_cache(maxsize=8)
def rope_tables(seq_len: int, rot_dim: int, theta: float, device=None,
                scaling: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [seq_len, rot_dim // 2] (fp32); cached, every layer uses the same tables."""
    inv = rope_inv_freq(rot_dim, theta, scaling, device)
    ang = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """x [..., S, hd]; rotates the first 2*cos.shape[-1] dims. Llama rotates halves (interleaved=False);
    GLM rotates adjacent pairs (interleaved=True). megaspeech/kernels/rope.py: the definition, and one fused
    Triton pass on CUDA."""
    return kernels_rope.apply_rope(x, cos, sin, interleaved)


def causal_attention(q, k, v, mask: torch.Tensor | None = None, impl: str = "auto") -> torch.Tensor:
    """q [B, h, S, d], k/v [B, kv, S, d] -> [B, h, S, d]. `mask`: bool [B, 1, S, S] (True = attend)
    replacing the plain causal mask (document masking). impl "auto": flash-attn on CUDA half
    precision without a mask, SDPA otherwise; "sdpa" always SDPA; "flash" flash-attn or an error.
    Both compute softmax(q k^T / sqrt(d) + causal) v. A FlexAttention BlockMask (megaspeech/model/
    attention.py: document masks on CUDA or model.attention=flex) runs FlexAttention instead."""
    if isinstance(mask, BlockMask):
        return flex_causal_attention(q, k, v, mask)
    flash_ok = flash_attn_func is not None and mask is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
    if impl == "flash" and not flash_ok:
        raise RuntimeError("model.attention=flash needs flash-attn installed (pip install -e '.[gpu]'), CUDA "
                           "tensors in fp16/bf16 and no document mask; use model.attention=auto or sdpa")
    if flash_ok and impl != "sdpa":
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
        return out.transpose(1, 2)
    gqa = q.shape[1] != k.shape[1]
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, f):
        super().__init__()
        self.hd = cfg.head_dim
        self.heads, self.kv = cfg.num_heads // f.tp, cfg.num_kv_heads // f.tp
        self.group = self.heads // self.kv
        self.rot_dim = int(self.hd * cfg.rope_fraction)
        self.theta, self.interleaved = cfg.rope_theta, cfg.family == "glm"
        self.scaling = cfg.rope_scaling.key()
        self.impl = cfg.attention
        width = (cfg.num_heads + 2 * cfg.num_kv_heads) * self.hd
        self.qkv = f.column(cfg.hidden_size, width, bias=cfg.qkv_bias, std=cfg.init_std)
        self.proj = f.row(cfg.num_heads * self.hd, cfg.hidden_size, std=cfg.init_std / (2 * cfg.num_layers) ** 0.5)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        qkv = self.qkv(x)  # [S, B, kv * (group + 2) * hd] (full S even under sequence parallelism)
        S, B = qkv.shape[:2]
        qkv = qkv.view(S, B, self.kv, self.group + 2, self.hd).permute(1, 2, 3, 0, 4)  # [B, kv, g+2, S, hd]
        tables = rope_tables.__wrapped__ if torch.compiler.is_compiling() else rope_tables  # no cache in graphs
        cos, sin = tables(S, self.rot_dim, self.theta, x.device, self.scaling)
        # RoPE on the strided views writes fresh contiguous tensors, so the head reshape is free.
        q = apply_rope(qkv[:, :, : self.group], cos, sin, self.interleaved).reshape(B, self.heads, S, self.hd)
        k = apply_rope(qkv[:, :, self.group], cos, sin, self.interleaved)
        v = qkv[:, :, self.group + 1]
        out = causal_attention(q, k, v, mask, self.impl)  # [B, h, S, hd]
        return self.proj(out.permute(2, 0, 1, 3).reshape(S, B, self.heads * self.hd))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig, f):
        super().__init__()
        out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5
        self.gate = f.column(cfg.hidden_size, cfg.ffn_hidden_size, bias=False, std=cfg.init_std)
        self.up = f.column(cfg.hidden_size, cfg.ffn_hidden_size, bias=False, std=cfg.init_std)
        self.down = f.row(cfg.ffn_hidden_size, cfg.hidden_size, std=out_std)

    def forward(self, x):
        return self.down(swiglu(self.gate(x), self.up(x)))  # silu(gate) * up; fused on CUDA


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, f):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attn = Attention(cfg, f)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = SwiGLU(cfg, f)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask)
        return x + self.mlp(self.mlp_norm(x))


class Embedding(nn.Module):
    """input_ids [B, S] -> hidden [S, B, H] (scattered over the sequence under sequence parallelism)."""

    def __init__(self, cfg: ModelConfig, f, vocab_size: int):
        super().__init__()
        self.embed = f.embedding(vocab_size, cfg.hidden_size, std=cfg.init_std)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids.t().contiguous())


class Head(nn.Module):
    """hidden [S, B, H] -> logits [S, B, vocab / tp] (vocab-parallel at TP>1).

    With `fused_loss` set (the trainer does so for train.fused_loss) it returns the head's matmul
    input instead, [S, B, H] (the full sequence under SP), and LMLoss computes the loss from it and
    `out.weight` in token chunks, so the [S, B, V] logits never exist."""

    def __init__(self, cfg: ModelConfig, f, vocab_size: int):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.out = f.head(cfg.hidden_size, vocab_size, std=cfg.init_std)
        self.head_input = f.head_input  # the identity at TP=1; TP>1: the TP/SP mapping before the matmul
        self.fused_loss = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_loss:
            return self.head_input(self.norm(x))
        return self.out(self.norm(x))


def layer_specs(cfg: ModelConfig, f, vocab_size: int) -> list[tuple[type, tuple]]:
    """The model as an ordered list of (class, args); index i is the layer's global id, used to seed
    its initialization so every parallel layout builds the same full model."""
    return [(Embedding, (cfg, f, vocab_size))] + [(Block, (cfg, f))] * cfg.num_layers + [(Head, (cfg, f, vocab_size))]


def build_layer(spec: tuple[type, tuple], index: int, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + index)
        return spec[0](*spec[1])


class DecoderLM(nn.Module):
    """The whole model in one process group stage: input_ids [B, S] -> logits [S, B, vocab / tp]."""

    def __init__(self, cfg: ModelConfig, f, vocab_size: int, seed: int):
        super().__init__()
        specs = layer_specs(cfg, f, vocab_size)
        # Registered as "0".."L+1", the names DeepSpeed's PipelineModule gives the same layers, so
        # checkpoints and adapters see one naming whatever the pipeline size.
        for i, spec in enumerate(specs):
            self.add_module(str(i), build_layer(spec, i, seed))
        if cfg.tie_embeddings:
            self.head.out.weight = self.embedding.embed.weight

    @property
    def embedding(self) -> Embedding:
        return self.get_submodule("0")

    @property
    def head(self) -> Head:
        return self.get_submodule(str(len(self) - 1))

    @property
    def blocks(self) -> list[Block]:
        return [self.get_submodule(str(i)) for i in range(1, len(self) - 1)]

    def __len__(self) -> int:
        return len(self._modules)

    def forward(self, input_ids: torch.Tensor | None, doc_ids: torch.Tensor | None = None,
                embeds: torch.Tensor | None = None) -> torch.Tensor:
        """embeds [S, B, H] (e.g. megaspeech.bridge.layer.splice) replaces the token embedding."""
        mask = attention_mask(doc_ids, self.blocks[0].attn.impl)  # once per forward, shared by the blocks
        # contiguous: on a transposed [S, B, H] view torch.matmul runs each linear whose weight is frozen
        # as a bmm over a per-position copy of the weight (~20x slower, see bridge.splice)
        x = self.embedding(input_ids) if embeds is None else embeds.contiguous()
        for block in self.blocks:
            x = block(x, mask)
        return self.head(x)
