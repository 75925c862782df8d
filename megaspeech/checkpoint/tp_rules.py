"""How a tensor-parallel slice relates to the full parameter: the rules shared by the engine's
resharding (DeepSpeed's universal checkpoint), offline reading (`full_state_dict`) and HF import."""
from __future__ import annotations

import re

import torch

# How a tensor-parallel slice relates to the full parameter (regexes on global parameter names such
# as `3.attn.proj.weight`, the same at every layout). Declared to DeepSpeed's universal-checkpoint
# converter the way Megatron-DeepSpeed does, and used by `full_state_dict` for export. Everything
# not listed is column-parallel: slices concatenate on dim 0 (the fused QKV is laid out per KV group,
# so its dim-0 slices are whole groups and concatenate back in order).
BRIDGE_REPLICATED = r"^(encoder|bridge)\."  # task: bridge keeps these whole on every TP rank


TP_REPLICATED = [r".*norm\.weight$", BRIDGE_REPLICATED]


TP_ROW_PARALLEL = [r".*attn\.proj\.weight$", r".*mlp\.down\.weight$"]


TP_VOCAB = [r".*embed\.weight$", r".*out\.weight$"]


def universal_checkpoint_info(padded_vocab: int, bridge: bool = False) -> dict:
    """The `universal_checkpoint_info` client state `ds_to_universal` needs. The padded vocab is the
    same at every layout (cfg.padded_vocab_size()), so nothing is stripped or re-padded. The converter
    refuses a pattern that matches no parameter, so the bridge's pattern is declared for its task only."""
    replicated = [p for p in TP_REPLICATED if bridge or p != BRIDGE_REPLICATED]
    return {"universal_checkpoint_version": 0.2,
            "tp_replicated_parameter_patterns": replicated,
            "parameter_with_row_parallelism_patterns": TP_ROW_PARALLEL,
            "vocabulary_parameter_patterns": TP_VOCAB,
            "original_vocab_size": padded_vocab, "padded_vocab_size": padded_vocab}


def merge_tp(name: str, slices: list[torch.Tensor]) -> torch.Tensor:
    if len(slices) == 1 or any(re.match(p, name) for p in TP_REPLICATED):
        return slices[0]
    return torch.cat(slices, dim=1 if any(re.match(p, name) for p in TP_ROW_PARALLEL) else 0)


def tp_slice(name: str, full: torch.Tensor, tp: int, tp_rank: int) -> torch.Tensor:
    """This TP rank's slice of a full parameter (the inverse of merge_tp)."""
    if tp == 1 or any(re.match(p, name) for p in TP_REPLICATED):
        return full
    dim = 1 if any(re.match(p, name) for p in TP_ROW_PARALLEL) else 0
    return full.chunk(tp, dim=dim)[tp_rank]
