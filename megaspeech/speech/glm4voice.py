"""GLM-4-Voice's released speech tokenizer (THUDM/glm-4-voice-tokenizer), read as distributed.

The release is a Hugging Face directory: `config.json` (a WhisperConfig plus the VQ fields below),
`model*.safetensors` with the release's key names (`model.encoder.conv1.weight`,
`model.encoder.layers.{i}.self_attn.q_proj.weight`, ..., `model.encoder.codebook.weight`,
`model.encoder.embed_positions2.weight`) and `preprocessor_config.json` (Whisper's feature
extractor, 128 mel bins). Only the encoder's first `quantize_position` layers are read; the decoder,
the final layer norm, the upper layers and the EMA buffers are ignored.

The encoder differs from Whisper's (and from megaspeech's own tokenizer) in three ways, all driven by
the config and reimplemented here:
  encoder_causal_convolution  conv1/conv2 pad (kernel - 1) frames on the left only (no look-ahead)
  quantize_causal_block_size  block-causal attention: frame i sees every earlier frame and the rest of
                              its own block of that many 50 Hz frames (200 = 4 s in the release);
                              after pooling the block is block_size / pooling_kernel_size tokens
  encoder_causal_attention /  plain causal attention instead (no padding mask, as the release does)
  quantize_causal_encoder
Then average (or max) pooling by `pooling_kernel_size` after layer `pooling_position` (4 -> 12.5 Hz),
nearest-codebook-vector quantization after layer `quantize_position` (16,384 codes of d_model), and a
second learned position embedding added to the quantized vectors (`embed`, used by the layers above).

Features and batching follow the release's `extract_speech_token`: 30 s segments, batches of 128 padded
to the longest one rounded up to a multiple of one token (conv strides x pooling x hop = 1280 samples),
Whisper's log-mel with an attention mask, codes of padded tokens dropped. The codes equal the release
code's on the same audio (tests/speech/test_glm4voice.py; docs/speech_tokenizer.md).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PREFIX = "model.encoder."
SEGMENT_SECONDS = 30  # the release cuts longer audio into 30 s pieces
BATCH = 128  # the release's batch of segments


def is_release_dir(path: str | Path) -> bool:
    """A GLM-4-Voice tokenizer directory: config.json with the VQ's `quantize_vocab_size`."""
    f = Path(path) / "config.json"
    return f.is_file() and "quantize_vocab_size" in json.loads(f.read_text())


def release_config(path: str | Path) -> dict:
    f = Path(path) / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"{path} is not a GLM-4-Voice tokenizer dir (no config.json); download "
                                f"THUDM/glm-4-voice-tokenizer from Hugging Face and pass that directory")
    cfg = json.loads(f.read_text())
    for k in ("quantize_vocab_size", "quantize_position", "d_model", "encoder_attention_heads", "num_mel_bins"):
        if cfg.get(k) is None:
            raise ValueError(f"{f}: `{k}` missing: not a GLM-4-Voice (WhisperVQ) tokenizer config")
    pos, qpos = cfg.get("pooling_position") or 0, cfg["quantize_position"]
    if cfg.get("pooling_kernel_size") and not 1 <= pos <= qpos:
        raise ValueError(f"{f}: pooling_position={pos} must be in [1, quantize_position={qpos}]")
    if cfg.get("pooling_type", "max") not in ("avg", "max"):
        raise ValueError(f"{f}: pooling_type={cfg['pooling_type']!r}; known: avg, max")
    return cfg


class CausalConv1d(nn.Conv1d):
    """A Conv1d that sees only the present and the past: (kernel - 1) * dilation zeros on the left."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1):
        super().__init__(cin, cout, kernel_size, stride=stride, padding=0)

    def forward(self, x):
        return super().forward(F.pad(x, (self.dilation[0] * (self.kernel_size[0] - 1), 0)))


def attention_bias(keep: torch.Tensor, block: int | None, dtype=torch.float32) -> torch.Tensor:
    """Additive attention mask [B, 1, T, T] (0 = attend, dtype's min = not) from the valid frames
    keep [B, T]: block-causal (frame i sees j <= i and all of i's block) when block is set, else
    every valid frame. Padded frames are never attended to."""
    T = keep.shape[1]
    if block is None:
        allowed = keep[:, None, :]  # [B, 1, T]: the same row for every query
    else:
        i = torch.arange(T, device=keep.device)
        causal = (i[None, :] <= i[:, None]) | (i[None, :] // block == i[:, None] // block)
        allowed = causal[None] & keep[:, None, :]
    return torch.zeros(allowed.shape, dtype=dtype, device=keep.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None]


class Attention(nn.Module):
    """Whisper self-attention (k_proj without bias) through scaled_dot_product_attention."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x, bias: torch.Tensor | None, causal: bool):
        B, T, D = x.shape

        def heads(t):
            return t.view(B, -1, self.heads, D // self.heads).transpose(1, 2).contiguous()
        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else bias,
                                             is_causal=causal and T > 1)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))


class Layer(nn.Module):
    """Pre-norm Whisper encoder layer (key names as in the release)."""

    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.self_attn = Attention(d, heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, x, bias, causal: bool):
        x = x + self.self_attn(self.self_attn_layer_norm(x), bias, causal)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class GLM4VoiceTokenizer(nn.Module):
    """The release's encoder up to its VQ: mel [B, n_mels, F] + mask -> codes [B, F / (2 * pool)]."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        d, n_mels = cfg["d_model"], cfg["num_mel_bins"]
        if cfg.get("activation_function", "gelu") != "gelu":
            raise ValueError(f"activation_function={cfg['activation_function']!r}; the release uses gelu")
        conv = CausalConv1d if cfg.get("encoder_causal_convolution") else _CenteredConv1d
        self.conv1 = conv(n_mels, d, 3)
        self.conv2 = conv(d, d, 3, stride=2)
        self.embed_positions = nn.Embedding(cfg.get("max_source_positions", 1500), d)
        self.layers = nn.ModuleList(Layer(d, cfg["encoder_attention_heads"], cfg.get("encoder_ffn_dim", 4 * d))
                                    for _ in range(cfg["quantize_position"]))
        self.pool = cfg.get("pooling_kernel_size") or 1
        self.codebook = nn.Embedding(cfg["quantize_vocab_size"], d)
        self.embed_positions2 = nn.Embedding(math.ceil(self.embed_positions.num_embeddings / self.pool), d)
        self.causal = bool(cfg.get("encoder_causal_attention") or cfg.get("quantize_causal_encoder"))
        self.block = cfg.get("quantize_causal_block_size")
        self.feature_extractor = None  # set by from_pretrained (preprocessor_config.json)

    @property
    def codebook_size(self) -> int:
        return self.codebook.num_embeddings

    @property
    def frame_rate(self) -> float:
        """Tokens per second of 16 kHz audio."""
        return 16000 / self.samples_per_token

    @property
    def samples_per_token(self) -> int:
        hop = self.feature_extractor.hop_length if self.feature_extractor is not None else 160
        return self.conv1.stride[0] * self.conv2.stride[0] * self.pool * hop

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "GLM4VoiceTokenizer":
        """Load a release directory as distributed (config.json, model*.safetensors, preprocessor_config.json)."""
        from transformers import WhisperFeatureExtractor
        path = Path(path)
        cfg = release_config(path)
        model = cls(cfg)
        model.load_state_dict(_read_weights(path, model), strict=True)
        if (path / "preprocessor_config.json").is_file():
            model.feature_extractor = WhisperFeatureExtractor.from_pretrained(path)
        else:
            model.feature_extractor = WhisperFeatureExtractor(feature_size=cfg["num_mel_bins"])
        if model.feature_extractor.feature_size != cfg["num_mel_bins"]:
            raise ValueError(f"{path}: preprocessor_config.json has feature_size={model.feature_extractor.feature_size}"
                             f" but config.json num_mel_bins={cfg['num_mel_bins']}")
        return model.eval()

    def _bias(self, keep: torch.Tensor, block: int | None) -> torch.Tensor | None:
        return None if self.causal else attention_bias(keep, block, self.conv1.weight.dtype)

    def _pool(self, x, keep):
        k = self.pool
        x = x.transpose(1, 2)
        if x.shape[-1] % k:
            x = F.pad(x, (0, k - x.shape[-1] % k))
        x = (F.avg_pool1d if self.cfg.get("pooling_type", "max") == "avg" else F.max_pool1d)(x, k)
        return x.transpose(1, 2), keep[:, ::k]

    @torch.no_grad()
    def forward(self, features: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """features [B, n_mels, F] (F even), attention_mask [B, F] (1 = audio) -> codes int64 [B, T]
        of every token, padded ones included (drop them with attention_mask[:, ::2 * pool])."""
        x = F.gelu(self.conv1(features))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        keep = attention_mask[:, ::self.conv1.stride[0] * self.conv2.stride[0]].bool()
        if x.shape[1] != keep.shape[1]:
            raise ValueError(f"attention_mask of {attention_mask.shape[-1]} frames for {features.shape[-1]} mel frames")
        x = x + self.embed_positions.weight[:x.shape[1]]
        block = self.block
        bias = self._bias(keep, block)
        for i, layer in enumerate(self.layers):
            x = layer(x, bias, self.causal)
            if i + 1 == self.cfg.get("pooling_position") and self.pool > 1:
                x, keep = self._pool(x, keep)
                block = None if block is None else block // self.pool
                bias = self._bias(keep, block)
        return nearest_code(x, self.codebook.weight)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, T] -> the quantized vectors the release's upper layers read (codebook + positions)."""
        return self.codebook(codes) + self.embed_positions2.weight[:codes.shape[1]]

    def tokenize_audios(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """16 kHz float utterances of any length -> codes int64 [ceil(n / samples_per_token)] each."""
        seg = SEGMENT_SECONDS * 16000
        pieces, owner = [], []
        for i, a in enumerate(audios):
            for s in range(0, a.shape[0], seg):
                pieces.append(np.asarray(a[s:s + seg], dtype=np.float32))
                owner.append(i)
        out: list[list[np.ndarray]] = [[] for _ in audios]
        dev = self.conv1.weight.device
        for b in range(0, len(pieces), BATCH):
            feats = self.feature_extractor(pieces[b:b + BATCH], sampling_rate=16000, return_attention_mask=True,
                                           return_tensors="pt", padding="longest", device=str(dev),
                                           pad_to_multiple_of=self.samples_per_token)
            mask = feats["attention_mask"].to(dev)
            codes = self(feats["input_features"].to(dev, self.conv1.weight.dtype), mask)
            keep = mask[:, ::self.conv1.stride[0] * self.conv2.stride[0] * self.pool].bool()
            for j in range(codes.shape[0]):
                out[owner[b + j]].append(codes[j][keep[j]].cpu().numpy().astype(np.int64))
        return [np.concatenate(c) if c else np.zeros(0, np.int64) for c in out]


class _CenteredConv1d(nn.Conv1d):
    """Whisper's own convolution (padding 1 on both sides), for configs without causal convolution."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1):
        super().__init__(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2)


def nearest_code(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """x [B, T, D] -> index of the nearest codebook row (squared L2 as |c|^2 + |x|^2 - 2 x.c) [B, T]."""
    flat = x.reshape(-1, codebook.shape[1])
    dist = torch.addmm(codebook.pow(2).sum(1) + flat.pow(2).sum(1, keepdim=True), flat, codebook.t(),
                       alpha=-2.0, beta=1.0)
    return dist.min(dim=1).indices.view(x.shape[0], x.shape[1])


def _read_weights(path: Path, model: GLM4VoiceTokenizer) -> dict[str, torch.Tensor]:
    """The release's `model.encoder.*` tensors this model needs, from every model*.safetensors."""
    from safetensors import safe_open
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no model*.safetensors (the release's weights)")
    want = set(model.state_dict())
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as st:
            for key in st.keys():
                if key.startswith(PREFIX) and key[len(PREFIX):] in want:
                    sd[key[len(PREFIX):]] = st.get_tensor(key)
    missing = sorted(want - set(sd))
    if missing:
        raise ValueError(f"{path}: the release's weights lack {len(missing)} tensors the tokenizer needs, e.g. "
                         f"{[PREFIX + m for m in missing[:4]]}; is this THUDM/glm-4-voice-tokenizer as distributed?")
    return sd
