"""The data plan a checkpoint's data position belongs to, and the check on resume.

A saved loader position (which shard slots each rank has read, how far into each) only means
something for the same seed and the same datasets: applied to another seed or another dataset under
the same source name it silently reads some data twice and some never. So the plan (megaspeech/data/
loader.py: seed, each source's path + manifest sha256, weights, epochs) is stored in meta.json and
compared on resume: any change is refused naming it, unless `run.data_plan_change=restart`, which
keeps the model and optimizer state and starts the data position over (logged).
"""
from __future__ import annotations

import logging
from pathlib import Path

from megaspeech.checkpoint.integrity import CheckpointError
from megaspeech.config.schema import PretrainConfig
from megaspeech.data.loader import data_plan, plan_changes, plan_from_config

log = logging.getLogger(__name__)


def current_plan(cfg: PretrainConfig) -> dict:
    """This run's plan. task: bridge reads its own data (bridge.*): only its seed is compared."""
    if cfg.task != "lm":
        return {"seed": cfg.run.seed, "kind": cfg.task, "sources": []}
    return data_plan(cfg.data, cfg.run.seed)


def keep_data_position(cfg: PretrainConfig, meta: dict, where: Path, is_logger: bool) -> bool:
    """True if the checkpoint's data position applies to this run; False if it is to be restarted
    (run.data_plan_change=restart and the plan changed). Raises CheckpointError on a refused change."""
    saved = meta.get("data_plan") or plan_from_config(meta.get("config", {}))
    if cfg.task != "lm" and "data_plan" not in meta:
        saved = {"seed": saved["seed"], "kind": cfg.task, "sources": []}
    changes = plan_changes(saved, current_plan(cfg))
    if not changes:
        return True
    what = "; ".join(changes)
    if cfg.run.data_plan_change != "restart":
        raise CheckpointError(
            f"the data differs from checkpoint {where}'s: {what}. Its data position does not apply to this data. "
            f"Resume with the checkpoint's data and run.seed, or accept the change deliberately with "
            f"run.data_plan_change=restart (keeps the model and optimizer state, reads the data from the start)")
    if is_logger:
        log.warning("run.data_plan_change=restart: the data differs from checkpoint %s's (%s): the data position "
                    "starts over; model, optimizer and step continue", where, what)
    return False
