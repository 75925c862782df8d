"""Bridge checkpoints (task: bridge) -> a usable model: rebuilt in one process, LoRA merged, exported.

    out_dir/lm/                  the decoder LM as a transformers Llama-family directory (LoRA adapters
                                 merged into the weights: peft merge_and_unload), launch/export_hf.py's format
    out_dir/speech.safetensors   encoder + bridge weights (names as in BridgeLM: encoder.*, bridge.*)
    out_dir/bridge.json          the run's config (model, vocab, bridge sections) to rebuild the front end
The LM reads the bridge output through `inputs_embeds` (speech embeddings, then the text's).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

from megaspeech.config.load import build
from megaspeech.config.schema import PretrainConfig
from megaspeech.parallel.state import Layout

SINGLE = Layout(tp=1, pp=1, dp=1, tp_rank=0, pp_rank=0, dp_rank=0, rank=0, world=1)


def load_bridge(ckpt_dir: str | Path):
    """(BridgeLM at TP=1 with the checkpoint's weights, its PretrainConfig) from a step directory of any
    TP layout (weights only: weights_only=True reads)."""
    from megaspeech.bridge.task import build_bridge_model
    from megaspeech.checkpoint.offline import full_state_dict
    sd, meta = full_state_dict(Path(ckpt_dir))
    raw = copy.deepcopy(meta["config"])
    if raw.get("task") != "bridge":
        raise ValueError(f"{ckpt_dir} is a task={raw.get('task', 'lm')!r} checkpoint; use launch/export_hf.py for it")
    raw["model"]["init_from_hf"] = None  # every LM weight comes from the checkpoint
    raw["parallel"].update(tensor=1, pipeline=1, sequence_parallel=False)
    cfg = build(PretrainConfig, raw, "checkpoint config")
    model = build_bridge_model(cfg, SINGLE)
    model.load_state_dict(sd, strict=True)
    return model.eval(), cfg


def export_bridge(ckpt_dir: str | Path, out_dir: str | Path) -> Path:
    """Write out_dir (see module docstring) into a temp dir renamed into place. Returns out_dir."""
    from safetensors.torch import save_file

    from megaspeech.config.load import to_dict
    from megaspeech.checkpoint.hf_export import MARKER, check_export_target, replace_export, write_hf
    from megaspeech.bridge.model import merged_lm
    check_export_target(out_dir, ckpt_dir)  # never replaces what megaspeech did not write
    model, cfg = load_bridge(ckpt_dir)
    out = Path(out_dir)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_hf(merged_lm(model).state_dict(), cfg.model, cfg.vocab, tmp / "lm")
    front = {k: v.contiguous() for k, v in model.state_dict().items() if k.startswith(("encoder.", "bridge."))}
    save_file(front, str(tmp / "speech.safetensors"))
    d = to_dict(cfg)
    (tmp / "bridge.json").write_text(json.dumps({k: d[k] for k in ("model", "vocab", "bridge", "run")}, indent=1))
    (tmp / MARKER).write_text("written by megaspeech.bridge.export; this directory may be replaced by the next export\n")
    return replace_export(tmp, out)
