"""Continue from a Hugging Face checkpoint (model.init_from_hf): its tensors through the family's
adapter (megaspeech/model/hf.py), the vocabulary extended, each parameter TP-sliced for this rank."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from megaspeech.checkpoint.tp_rules import tp_slice
from megaspeech.model.hf import adapter_for


def load_hf_state_dict(hf_dir: str | Path) -> tuple[dict[str, torch.Tensor], object]:
    """(tensors, transformers config) of an HF model directory; safetensors only (no pickles)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig
    hf_dir = Path(hf_dir).expanduser()
    index = hf_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else \
        [p.name for p in hf_dir.glob("*.safetensors")]
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {hf_dir} (model.init_from_hf): save the model with "
                                f"save_pretrained(safe_serialization=True)")
    from safetensors import SafetensorError

    from megaspeech.checkpoint.hf_files import verify_export
    verify_export(hf_dir)  # a megaspeech export is checked against its checksums.json; a plain HF dir is not
    sd = {}
    for f in files:
        try:
            sd.update(load_file(hf_dir / f))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{hf_dir / f}: cannot be loaded ({type(e).__name__}: {e}); the file is damaged or "
                             f"truncated: download or export it again") from None
    return sd, AutoConfig.from_pretrained(str(hf_dir))


def extend_vocab(w: torch.Tensor, rows: int) -> torch.Tensor:
    """[V_hf, H] -> [rows, H]: new rows (speech codes, specials, padding) = mean of the existing rows."""
    out = w.new_empty(rows, w.shape[1])
    out[: w.shape[0]] = w
    out[w.shape[0]:] = w.float().mean(0).to(w.dtype)
    return out


@torch.no_grad()
def init_from_hf(model: torch.nn.Module, cfg, layout) -> None:
    """Overwrite `model`'s parameters (a DecoderLM or this stage of a PipelineModule, TP-sliced or
    not) with the HF model at cfg.model.init_from_hf (Llama, Qwen2, Mistral, GLM-4). Its embedding rows
    are the text part of ours (vocab.text_size = config.json vocab_size, padding rows past its
    tokenizer included); speech codes, specials and our padding rows are added as the mean of the
    existing embeddings (and output rows), so greedy decoding of text never picks them (a mean logit
    is never above the max). A model exported by launch/export_hf.py (vocab_size = our padded vocab)
    is loaded as is."""
    src = str(Path(cfg.model.init_from_hf).expanduser())
    hf, hf_cfg = load_hf_state_dict(src)
    ad = adapter_for(cfg.model)
    ad.check_hf_config(hf_cfg, f"model.init_from_hf={src}")
    v_hf = hf["model.embed_tokens.weight"].shape[0]
    rows, L = cfg.padded_vocab_size(), cfg.model.num_layers
    if v_hf not in (cfg.vocab.text_size, rows):
        raise ValueError(f"model.init_from_hf={src} has {v_hf} embedding rows but vocab.text_size="
                         f"{cfg.vocab.text_size}; set vocab.text_size={v_hf} or leave it out (the embedding "
                         f"rows are the text ids)")
    full = ad.from_hf(hf)
    if v_hf != rows:  # a text LLM: append speech codes, specials, padding (else: our own export, unified already)
        for k in ("0.embed.weight", f"{L + 1}.out.weight"):
            if k in full:
                full[k] = extend_vocab(full[k], rows)
    seen = set()
    for name, p in model.named_parameters():
        if name not in full:
            raise KeyError(f"parameter {name} has no counterpart in {src} (adapter {type(ad).__name__})")
        seen.add(name)
        piece = tp_slice(name, full[name], layout.tp, layout.tp_rank)
        if piece.shape != p.shape:
            raise ValueError(f"{name}: {src} gives shape {tuple(piece.shape)} at TP rank {layout.tp_rank}, "
                             f"the model has {tuple(p.shape)}")
        p.copy_(piece.to(p.dtype))  # in place: keeps megatron's tensor_model_parallel attributes
