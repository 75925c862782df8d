"""Apply parallelism to the (parallelism-free) model, in this order:
1. tensor / sequence parallel: chosen by the layer factory the model is built with;
2. pipeline parallel: the same layer list wrapped in DeepSpeed's PipelineModule (pipeline > 1);
3. sequence-parallel gradient reduction for replicated norm weights;
4. activation checkpointing of the selected blocks;
5. torch.compile per block (`train.compile`), as torchtitan does: one graph reused by every layer.
ZeRO data parallelism is applied afterwards by `deepspeed.initialize`.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from megaspeech.config.schema import PretrainConfig
from megaspeech.model.llm import Block, DecoderLM, Head, RMSNorm, layer_specs
from megaspeech.parallel.layers import make_factory
from megaspeech.parallel.state import Layout, pipeline_topology

log = logging.getLogger(__name__)


def build_model(cfg: PretrainConfig, layout: Layout, loss_fn=None) -> nn.Module:
    f = make_factory(layout.tp, cfg.parallel.sequence_parallel)
    vocab = cfg.padded_vocab_size()
    if layout.pp == 1:
        model = DecoderLM(cfg.model, f, vocab, cfg.run.seed)
    else:
        from deepspeed.pipe import LayerSpec, PipelineModule
        from megaspeech.parallel.pipe_layers import DOC_LAYERS
        swap = DOC_LAYERS if cfg.data.document_mask else {}  # doc_ids travel beside the activations
        specs = [LayerSpec(swap.get(cls, cls), *args) for cls, args in layer_specs(cfg.model, f, vocab)]
        # seed_fn(base_seed + global layer id) before each layer: the same seeding as DecoderLM.
        model = PipelineModule(layers=specs, loss_fn=loss_fn, topology=pipeline_topology(layout),
                               partition_method="type:Block", seed_layers=True, seed_fn=torch.manual_seed,
                               base_seed=cfg.run.seed, activation_checkpoint_interval=0)
    if loss_fn is not None and cfg.train.fused_loss:
        bind_fused_loss(model, loss_fn, cfg)
    if cfg.parallel.sequence_parallel:
        reduce_sequence_parallel_grads(model)
    checkpoint_blocks(model, cfg.train.activation_checkpointing, cfg.model.num_layers)
    if cfg.train.compile_enabled("cuda" if torch.cuda.is_available() else "cpu"):
        for block in blocks_by_layer_id(model).values():
            block.compile()
    return model


def bind_fused_loss(model: nn.Module, loss_fn, cfg: PretrainConfig) -> None:
    """train.fused_loss: the Head (last pipeline stage only) returns its matmul input and the loss
    takes the head weight. ZeRO-3 gathers a weight only inside its module's forward, so there the
    plain logits path stays (the same function)."""
    if cfg.parallel.zero_stage == 3:
        log.warning("train.fused_loss is not available with ZeRO-3; using the plain logits loss")
        return
    heads = [m for m in model.modules() if isinstance(m, Head)]
    if heads:
        loss_fn.bind_head(heads[0], cfg.train.loss_chunk_tokens)


def blocks_by_layer_id(model: nn.Module) -> dict[int, Block]:
    """Global layer id (0-based block index) -> Block, for the blocks held by this stage."""
    return {int(name) - 1: m for name, m in model.named_children() if isinstance(m, Block)}


def checkpoint_blocks(model: nn.Module, which, num_layers: int) -> None:
    ids = range(num_layers) if which == "all" else ([] if which == "none" else which)
    for layer_id, block in blocks_by_layer_id(model).items():
        if layer_id in ids:
            inner = block.forward
            block.forward = lambda *args, _f=inner: checkpoint(_f, *args, use_reentrant=False)


def reduce_sequence_parallel_grads(model: nn.Module) -> None:
    """Under SP each TP rank normalizes a slice of the sequence, so norm-weight gradients are
    partial sums: all-reduce them over the TP group as they are produced."""
    from megatron.core import parallel_state as ps
    group = ps.get_tensor_model_parallel_group()

    def hook(grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=group)
        return grad

    for m in model.modules():
        if isinstance(m, RMSNorm):
            m.weight.sequence_parallel = True
            m.weight.register_hook(hook)
