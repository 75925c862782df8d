"""Hugging Face interop: one adapter per model family maps parameter names (and fused layouts) both
ways; `export_hf` (launch/export_hf.py) and `init_from_hf` (model.init_from_hf) share it.

Our names (global, the same at every TP/PP layout, see model/llm.py):
  0.embed.weight [V_pad, H]; i.attn_norm.weight; i.attn.qkv.weight (fused per KV group:
  [q heads of group g, k_g, v_g] x head_dim rows) and .bias; i.attn.proj.weight; i.mlp_norm.weight;
  i.mlp.{gate,up,down}.weight for blocks i = 1..L; L+1.norm.weight; L+1.out.weight [V_pad, H].
HF Llama (LlamaForCausalLM), Qwen2 (Qwen2ForCausalLM), Mistral (MistralForCausalLM), GLM-4
(GlmForCausalLM): model.embed_tokens, model.layers.{i-1}.* (q/k/v/o_proj; gate/up/down_proj, GLM
gate_up_proj fused [gate; up]), model.norm, lm_head. RoPE conventions already agree (Llama, Qwen2 and
Mistral rotate halves, GLM interleaved pairs of a head fraction), so no row permutation is needed.
Which config.json options are supported (and which refused) is megaspeech/config/hf_shape.py's.
"""
from __future__ import annotations

import functools
import inspect

import torch

from megaspeech.config.hf_shape import ARCHITECTURES, hf_model_fields, same
from megaspeech.config.schema import ModelConfig


class FamilyAdapter:
    """Name/layout mapping for one family. `to_hf` / `from_hf` map full (un-sliced) state dicts."""
    family = "llama"
    architecture = "LlamaForCausalLM"
    model_type = "llama"

    def __init__(self, m: ModelConfig):
        self.m = m
        self.kv, self.group, self.hd = m.num_kv_heads, m.num_heads // m.num_kv_heads, m.head_dim

    # fused QKV <-> q, k, v (weights [rows, H] and biases [rows])
    def split_qkv(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rest = w.shape[1:]
        w = w.reshape(self.kv, self.group + 2, self.hd, *rest)
        return (w[:, : self.group].reshape(-1, *rest), w[:, self.group].reshape(-1, *rest),
                w[:, self.group + 1].reshape(-1, *rest))

    def fuse_qkv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        rest = q.shape[1:]
        parts = (q.reshape(self.kv, self.group, self.hd, *rest), k.reshape(self.kv, 1, self.hd, *rest),
                 v.reshape(self.kv, 1, self.hd, *rest))
        return torch.cat(parts, dim=1).reshape(-1, *rest)

    def mlp_to_hf(self, p: str, gate, up, down) -> dict:
        return {f"{p}.mlp.gate_proj.weight": gate, f"{p}.mlp.up_proj.weight": up, f"{p}.mlp.down_proj.weight": down}

    def mlp_from_hf(self, p: str, hf: dict) -> tuple:
        return hf[f"{p}.mlp.gate_proj.weight"], hf[f"{p}.mlp.up_proj.weight"], hf[f"{p}.mlp.down_proj.weight"]

    def to_hf(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        m, L = self.m, self.m.num_layers
        out = {"model.embed_tokens.weight": sd["0.embed.weight"], "model.norm.weight": sd[f"{L + 1}.norm.weight"],
               "lm_head.weight": sd["0.embed.weight"] if m.tie_embeddings else sd[f"{L + 1}.out.weight"]}
        for i in range(1, L + 1):
            p = f"model.layers.{i - 1}"
            q, k, v = self.split_qkv(sd[f"{i}.attn.qkv.weight"])
            out.update({f"{p}.input_layernorm.weight": sd[f"{i}.attn_norm.weight"],
                        f"{p}.post_attention_layernorm.weight": sd[f"{i}.mlp_norm.weight"],
                        f"{p}.self_attn.q_proj.weight": q, f"{p}.self_attn.k_proj.weight": k,
                        f"{p}.self_attn.v_proj.weight": v, f"{p}.self_attn.o_proj.weight": sd[f"{i}.attn.proj.weight"]})
            if m.qkv_bias:
                qb, kb, vb = self.split_qkv(sd[f"{i}.attn.qkv.bias"])
                out.update({f"{p}.self_attn.q_proj.bias": qb, f"{p}.self_attn.k_proj.bias": kb,
                            f"{p}.self_attn.v_proj.bias": vb})
                out.update(self.o_bias_to_hf(p, sd[f"{i}.attn.proj.weight"]))
            out.update(self.mlp_to_hf(p, sd[f"{i}.mlp.gate.weight"], sd[f"{i}.mlp.up.weight"], sd[f"{i}.mlp.down.weight"]))
        return out

    def o_bias_to_hf(self, p: str, o_weight: torch.Tensor) -> dict:
        # LlamaConfig.attention_bias puts a bias on o_proj too; ours has none: export zeros.
        return {f"{p}.self_attn.o_proj.bias": torch.zeros(o_weight.shape[0], dtype=o_weight.dtype)}

    def from_hf(self, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """HF full state dict -> ours (vocab rows as in the HF model; see `extend_vocab`)."""
        m, L = self.m, self.m.num_layers
        out = {"0.embed.weight": hf["model.embed_tokens.weight"], f"{L + 1}.norm.weight": hf["model.norm.weight"]}
        if not m.tie_embeddings:
            out[f"{L + 1}.out.weight"] = hf.get("lm_head.weight", hf["model.embed_tokens.weight"])
        for i in range(1, L + 1):
            p = f"model.layers.{i - 1}"
            a = f"{p}.self_attn"
            out[f"{i}.attn_norm.weight"] = hf[f"{p}.input_layernorm.weight"]
            out[f"{i}.mlp_norm.weight"] = hf[f"{p}.post_attention_layernorm.weight"]
            out[f"{i}.attn.qkv.weight"] = self.fuse_qkv(hf[f"{a}.q_proj.weight"], hf[f"{a}.k_proj.weight"],
                                                        hf[f"{a}.v_proj.weight"])
            out[f"{i}.attn.proj.weight"] = hf[f"{a}.o_proj.weight"]
            if m.qkv_bias:
                out[f"{i}.attn.qkv.bias"] = self.fuse_qkv(hf[f"{a}.q_proj.bias"], hf[f"{a}.k_proj.bias"],
                                                          hf[f"{a}.v_proj.bias"])
            ob = hf.get(f"{a}.o_proj.bias")
            if ob is not None and bool(ob.abs().max() > 0):
                raise ValueError(f"{a}.o_proj.bias is non-zero; megaspeech's attention output projection has no "
                                 f"bias, so this model cannot be imported exactly")
            out[f"{i}.mlp.gate.weight"], out[f"{i}.mlp.up.weight"], out[f"{i}.mlp.down.weight"] = self.mlp_from_hf(p, hf)
        return out

    # configs
    def rope_parameters(self) -> dict:
        m, rope = self.m, {"rope_type": "default", "rope_theta": self.m.rope_theta}
        if m.rope_fraction != 1.0:
            rope["partial_rotary_factor"] = m.rope_fraction
        if m.rope_scaling.type == "llama3":
            r = m.rope_scaling
            rope.update(rope_type="llama3", factor=r.factor, low_freq_factor=r.low_freq_factor,
                        high_freq_factor=r.high_freq_factor,
                        original_max_position_embeddings=r.original_max_position_embeddings)
        return rope

    def family_kwargs(self) -> dict:
        return {"attention_bias": self.m.qkv_bias, "mlp_bias": False}

    def hf_config(self, vocab_rows: int, **tokens):
        """transformers config for our ModelConfig; `tokens`: bos/eos/pad_token_id."""
        from transformers import AutoConfig
        m = self.m
        return AutoConfig.for_model(
            self.model_type, architectures=[self.architecture], vocab_size=vocab_rows, hidden_size=m.hidden_size,
            intermediate_size=m.ffn_hidden_size, num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
            num_key_value_heads=m.num_kv_heads, head_dim=m.head_dim, hidden_act="silu", rms_norm_eps=m.norm_eps,
            rope_parameters=self.rope_parameters(), tie_word_embeddings=m.tie_embeddings,
            max_position_embeddings=max(8192, m.rope_scaling.original_max_position_embeddings),
            **self.family_kwargs(), **tokens)

    def check_hf_config(self, c, where: str) -> None:
        """Fail naming the model.* field that differs from the HF config `c` (or the HF option that is
        not supported)."""
        for name, theirs in hf_model_fields(c, where).items():
            ours = getattr(self.m, name)
            if name == "rope_scaling":
                ours = {"type": "none"} if ours.type == "none" else vars(ours)
            if not same(ours, theirs):
                raise ValueError(f"{where} has {name}={theirs!r} but model.{name}={ours!r}; "
                                 f"set model.{name}: {theirs!r} in the config (or leave it out)")


class Qwen2Adapter(FamilyAdapter):
    """Qwen2/Qwen2.5: q/k/v always biased (zeros exported when ours has none), o_proj never."""
    family, architecture, model_type = "qwen2", "Qwen2ForCausalLM", "qwen2"

    def to_hf(self, sd):
        out = super().to_hf(sd)
        if not self.m.qkv_bias:
            for i in range(self.m.num_layers):
                for p in ("q", "k", "v"):
                    w = out[f"model.layers.{i}.self_attn.{p}_proj.weight"]
                    out[f"model.layers.{i}.self_attn.{p}_proj.bias"] = torch.zeros(w.shape[0], dtype=w.dtype)
        return out

    def o_bias_to_hf(self, p, o_weight):
        return {}

    def family_kwargs(self):
        return {"use_sliding_window": False, "sliding_window": None}


class MistralAdapter(FamilyAdapter):
    family, architecture, model_type = "mistral", "MistralForCausalLM", "mistral"

    def family_kwargs(self):
        return {"sliding_window": None}


class GlmAdapter(FamilyAdapter):
    family, architecture, model_type = "glm", "GlmForCausalLM", "glm"

    def mlp_to_hf(self, p, gate, up, down):
        return {f"{p}.mlp.gate_up_proj.weight": torch.cat([gate, up], dim=0), f"{p}.mlp.down_proj.weight": down}

    def mlp_from_hf(self, p, hf):
        gate, up = hf[f"{p}.mlp.gate_up_proj.weight"].chunk(2, dim=0)
        return gate, up, hf[f"{p}.mlp.down_proj.weight"]

    def o_bias_to_hf(self, p, o_weight):
        return {}  # GLM's attention_bias covers q/k/v only

    def rope_parameters(self):
        return {**super().rope_parameters(), "partial_rotary_factor": self.m.rope_fraction}

    def family_kwargs(self):
        return {"attention_bias": self.m.qkv_bias}


ADAPTERS = {"llama": FamilyAdapter, "qwen2": Qwen2Adapter, "mistral": MistralAdapter, "glm": GlmAdapter}
assert set(ADAPTERS) == set(ARCHITECTURES) and all(ADAPTERS[k].architecture == v for k, v in ARCHITECTURES.items())


def adapter_for(m: ModelConfig) -> FamilyAdapter:
    return ADAPTERS[m.family](m)


@functools.lru_cache(maxsize=None)
def _cache_kwarg(forward) -> str:
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def cache_kwargs(module, cache) -> dict:
    """{name: cache} for calling a transformers model or layer with a KV cache: transformers 5.x renamed
    `past_key_values` to `cache` (5.0 takes past_key_values, 5.24 cache; layers swallow the other name in
    **kwargs silently and would run uncached), so the name is read from `module.forward`'s signature."""
    return {_cache_kwarg(type(module).forward): cache}


def output_cache(out):
    """The KV cache a transformers model returned (`out.cache` in newer 5.x, `out.past_key_values` before)."""
    return out["cache"] if "cache" in out else out["past_key_values"]
