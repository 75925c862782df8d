"""What the trainer asks of a task (as torchtitan's TrainSpec): the `Task` protocol and `LMTask`, the
token LM of pre-training. The trainer (megaspeech/train/trainer.py) owns the engine, the optimizer, the
LM loss (its global token scale and per-modality sums), checkpoints and the loop; the task brings the
model, the data and the forward of one micro-batch. launch/pretrain.py picks the task from `cfg.task`:
lm -> LMTask, bridge -> megaspeech.bridge.task.BridgeTask (the one place that knows both).
"""
from __future__ import annotations

from typing import Protocol

import torch

from megaspeech.checkpoint import tp_rules
from megaspeech.config.schema import PretrainConfig
from megaspeech.data.loader import build_train_loader
from megaspeech.parallel.parallelize import build_model
from megaspeech.parallel.state import Layout
from megaspeech.train.loss import LMLoss


class Task(Protocol):
    def build_model(self, loss_fn: LMLoss) -> torch.nn.Module:
        """The model DeepSpeed wraps, built on first call (the trainer calls it once, before the optimizer);
        `loss_fn` is the trainer's LM loss (a pipeline model computes it on the last stage)."""

    def lr_mult(self) -> dict[str, float] | None:
        """Learning-rate multipliers by parameter-name prefix (build_optimizer), or None."""

    def build_loader(self):
        """The resumable training loader of this data-parallel rank (state_dict / load_state_dict)."""

    def universal_checkpoint_info(self) -> dict:
        """The checkpoint's `universal_checkpoint_info` client state (TP resharding rules)."""

    def begin_step(self) -> None:
        """Zero the task's own per-step sums (the trainer has set the LM loss's scale)."""

    def micro_loss(self, engine, batch: dict, device: torch.device, loss_fn: LMLoss) -> torch.Tensor:
        """One micro-batch's loss to backward (pipeline=1)."""

    def pipe_item(self, batch: dict, device: torch.device, non_blocking: bool = False):
        """A micro-batch as DeepSpeed's pipeline engine takes it: (inputs, targets) (pipeline > 1)."""

    def metrics(self, all_reduce, owner: bool) -> dict:
        """The step's metrics beyond the LM loss ({} if none), summed over ranks with `all_reduce`;
        `owner`: this rank holds the loss sums that count (last stage, TP rank 0)."""

    def validation_batches(self, grad_accum: int) -> list[list[dict]]:
        """This rank's held-out micro-batches (eval.sources), one group per global batch."""

    def val_forward(self, engine, batch: dict, device: torch.device, loss_fn: LMLoss) -> None:
        """The forward of one held-out micro-batch into `loss_fn`'s sums (pipeline=1, no grad)."""


class LMTask:
    """task: lm — the token LM (megaspeech/model/llm.py through build_model), optionally initialised from
    a Hugging Face model (model.init_from_hf), on the packed token loader; micro-batches are
    (ids, doc ids or None) -> (labels, loss mask, modality)."""

    def __init__(self, cfg: PretrainConfig, layout: Layout):
        self.cfg, self.layout = cfg, layout

    def build_model(self, loss_fn: LMLoss) -> torch.nn.Module:
        model = build_model(self.cfg, self.layout, loss_fn)
        if self.cfg.model.init_from_hf:
            from megaspeech.checkpoint.hf_import import init_from_hf
            init_from_hf(model, self.cfg, self.layout)
        return model

    def lr_mult(self) -> None:
        return None

    def build_loader(self):
        cfg, lay = self.cfg, self.layout
        return build_train_loader(cfg.data, cfg.vocab, seq_len=cfg.train.seq_len, micro_batch=cfg.train.micro_batch,
                                  dp_rank=lay.dp_rank, dp_size=lay.dp, seed=cfg.run.seed)

    def universal_checkpoint_info(self) -> dict:
        return tp_rules.universal_checkpoint_info(self.cfg.padded_vocab_size())

    def begin_step(self) -> None:
        pass

    def micro_loss(self, engine, batch: dict, device: torch.device, loss_fn: LMLoss) -> torch.Tensor:
        (ids, doc_ids), targets = self._on_device(batch, device, non_blocking=True)
        return loss_fn(engine(ids, doc_ids), targets)

    def pipe_item(self, batch: dict, device: torch.device, non_blocking: bool = False):
        (ids, doc_ids), targets = self._on_device(batch, device, non_blocking)
        return (ids if doc_ids is None else (ids, doc_ids)), targets

    def metrics(self, all_reduce, owner: bool) -> dict:
        return {}

    def validation_batches(self, grad_accum: int) -> list[list[dict]]:
        from megaspeech.train.validate import validation_batches
        return validation_batches(self.cfg, self.layout.dp_rank, self.layout.dp, grad_accum)

    def val_forward(self, engine, batch: dict, device: torch.device, loss_fn: LMLoss) -> None:
        (ids, doc_ids), targets = self._on_device(batch, device)
        loss_fn(engine(ids, doc_ids), targets)

    def _on_device(self, b: dict, device: torch.device, non_blocking: bool = False):
        """A micro-batch on the device: (input ids, doc ids or None), (labels, loss mask, modality)."""
        dev = lambda k: b[k].to(device, non_blocking=non_blocking)  # noqa: E731
        return ((dev("input_ids"), dev("doc_ids") if self.cfg.data.document_mask else None),
                (dev("labels"), dev("loss_mask"), dev("modality")))
