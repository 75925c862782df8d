"""model.* (and vocab.text_size) from a Hugging Face checkpoint's config.json, for model.init_from_hf.

One reading of an HF config serves both directions: `resolve_init_from_hf` fills the YAML tree before
it is typed (a key absent from the YAML takes the HF value; a key present must agree, else an error
naming both), and megaspeech/model/hf.py checks a typed ModelConfig against the same fields when the
weights are loaded. Supported: Llama (LlamaForCausalLM, rope_scaling `llama3`), Qwen2/Qwen2.5
(Qwen2ForCausalLM), Mistral (MistralForCausalLM) and GLM-4 (GlmForCausalLM). Anything megaspeech does
not compute exactly is refused naming the field and the supported values: another rope type, sliding-window
attention, an MLP bias, another activation, a head_dim other than hidden_size / num_heads.

The text part of the vocabulary is the embedding rows (config.json `vocab_size`), padding rows included:
GLM-4's tokenizer has 151,343 tokens and 151,552 rows, Qwen2.5's 151,665 and 151,936; rows no tokenizer
id reaches stay text ids. A megaspeech export (vocab.json beside config.json) gives its own text_size.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from megaspeech.errors import ConfigError

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM",
                 "glm": "GlmForCausalLM"}
ROPE_TYPES = ("default", "llama3")
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def read_hf_config(hf_dir: str | Path):
    """The transformers config of an HF model dir; an unsupported model_type is refused before
    transformers is asked (it may not know it at all)."""
    hf_dir = Path(hf_dir).expanduser()
    raw = json.loads((hf_dir / "config.json").read_text())
    mt = raw.get("model_type")
    if mt not in ARCHITECTURES:
        raise ConfigError(f"model.init_from_hf={hf_dir}: config.json has model_type={mt!r}; supported: "
                          f"{sorted(ARCHITECTURES)} ({', '.join(ARCHITECTURES.values())})")
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(str(hf_dir))


def _refuse(where: str, field: str, value, supported: str) -> None:
    raise ConfigError(f"{where}: config.json has {field}={value!r}, which megaspeech does not implement "
                      f"exactly; supported: {supported}")


def _rope_fields(c, where: str) -> dict:
    rope = dict(getattr(c, "rope_parameters", None) or {})
    rtype = rope.get("rope_type", rope.get("type", "default"))
    if rtype not in ROPE_TYPES:
        _refuse(where, "rope_parameters.rope_type", rtype, f"{list(ROPE_TYPES)}")
    theta = rope.get("rope_theta", getattr(c, "rope_theta", None))
    frac = rope.get("partial_rotary_factor", getattr(c, "partial_rotary_factor", None))
    out = {"rope_theta": float(theta), "rope_fraction": float(1.0 if frac is None else frac),
           "rope_scaling": {"type": "none"}}
    if rtype == "llama3":
        missing = [k for k in LLAMA3_KEYS if rope.get(k) is None]
        if missing:
            _refuse(where, "rope_parameters", rope, f"llama3 with {list(LLAMA3_KEYS)} all set (missing {missing})")
        out["rope_scaling"] = {"type": "llama3", **{k: rope[k] for k in LLAMA3_KEYS}}
    return out


def _refusals(c, mt: str, where: str) -> None:
    if getattr(c, "hidden_act", "silu") != "silu":
        _refuse(where, "hidden_act", c.hidden_act, "'silu' (SwiGLU)")
    if getattr(c, "mlp_bias", False):
        _refuse(where, "mlp_bias", c.mlp_bias, "false")
    if mt == "mistral" and getattr(c, "sliding_window", None) is not None:
        _refuse(where, "sliding_window", c.sliding_window, "null (full causal attention; sliding-window attention "
                "is not implemented)")
    if getattr(c, "use_sliding_window", False):
        _refuse(where, "use_sliding_window", True, "false (sliding-window attention is not implemented)")
    if "sliding_attention" in (getattr(c, "layer_types", None) or ()):
        _refuse(where, "layer_types", "sliding_attention", "'full_attention' in every layer")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if head_dim * c.num_attention_heads != c.hidden_size:
        _refuse(where, "head_dim", head_dim, f"hidden_size / num_attention_heads = "
                f"{c.hidden_size / c.num_attention_heads:g}")


def hf_model_fields(c, where: str) -> dict:
    """model.* values of the transformers config `c` (raises ConfigError for what is not supported)."""
    mt = c.model_type
    if mt not in ARCHITECTURES:
        _refuse(where, "model_type", mt, f"{sorted(ARCHITECTURES)}")
    _refusals(c, mt, where)
    qkv_bias = {"qwen2": True, "mistral": False}.get(mt, bool(getattr(c, "attention_bias", False)))
    return {"family": mt, "num_layers": c.num_hidden_layers, "hidden_size": c.hidden_size,
            "ffn_hidden_size": c.intermediate_size, "num_heads": c.num_attention_heads,
            "num_kv_heads": c.num_key_value_heads or c.num_attention_heads, "norm_eps": float(c.rms_norm_eps),
            "qkv_bias": qkv_bias, "tie_embeddings": bool(c.tie_word_embeddings), **_rope_fields(c, where)}


def same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6)
    return a == b


def hf_text_rows(hf_dir: str | Path, c) -> int:
    """vocab.text_size for a start from `hf_dir`: its embedding rows, or a megaspeech export's text_size."""
    vj = Path(hf_dir).expanduser() / "vocab.json"
    return int(json.loads(vj.read_text())["text_size"]) if vj.is_file() else int(c.vocab_size)


def _fill(section: dict, name: str, key: str, theirs, src: str) -> None:
    if key not in section:
        section[key] = theirs
    elif not same(_normalized(key, section[key]), theirs):
        raise ConfigError(f"{name}.{key}={section[key]!r} in the config but model.init_from_hf={src} has "
                          f"{theirs!r} (config.json); remove {name}.{key} to take the checkpoint's value, or "
                          f"start from another checkpoint")


def _normalized(key: str, value):
    if key == "rope_scaling" and isinstance(value, dict) and value.get("type", "none") == "none":
        return {"type": "none"}
    return value


def resolve_init_from_hf(tree: dict) -> dict:
    """The config tree with model.* and vocab.text_size filled from model.init_from_hf's config.json,
    and vocab.hf_tokenizer = that dir when no text tokenizer is named. When the dir is absent (a
    --dry-run before the weights are downloaded) the YAML's own values are used; loading the weights
    checks them again."""
    model = dict(tree.get("model") or {})
    src = model.get("init_from_hf")
    if not src:
        return tree
    tree, vocab = dict(tree), dict(tree.get("vocab") or {})
    hf_dir = Path(src).expanduser()
    if not vocab.get("sp_model") and not vocab.get("hf_tokenizer") and not (hf_dir / "vocab.json").is_file():
        vocab["hf_tokenizer"] = src  # its tokenizer's ids are the text ids (a megaspeech export names its own)
    if (hf_dir / "config.json").is_file():
        c = read_hf_config(hf_dir)
        for key, theirs in hf_model_fields(c, f"model.init_from_hf={src}").items():
            _fill(model, "model", key, theirs, src)
        _fill(vocab, "vocab", "text_size", hf_text_rows(hf_dir, c), src)
    tree["model"], tree["vocab"] = model, vocab
    return tree
