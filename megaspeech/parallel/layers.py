"""Layer factories: the one place tensor parallelism enters the model.

`TorchLayers` (TP=1) and `MegatronLayers` (TP>1, megatron-core `tensor_parallel`) build modules with
the same call signature and the same initialization: each weight is drawn as the full master
matrix from the torch RNG (normal(0, std)) and, at TP>1, sliced — so a given seed gives the same
full model whatever the layout. Every module returned maps a tensor to a tensor.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F


def _normal(std: float):
    return functools.partial(nn.init.normal_, mean=0.0, std=std)


class TorchLayers:
    tp = 1
    sequence_parallel = False

    def _linear(self, in_f: int, out_f: int, bias: bool, std: float) -> nn.Linear:
        lin = nn.utils.skip_init(nn.Linear, in_f, out_f, bias=bias)  # no RNG draw before ours
        w = torch.empty(out_f, in_f)
        _normal(std)(w)
        with torch.no_grad():
            lin.weight.copy_(w)
            if bias:
                lin.bias.zero_()
        return lin

    def column(self, in_f, out_f, bias=False, std=0.02):
        return self._linear(in_f, out_f, bias, std)

    def row(self, in_f, out_f, bias=False, std=0.02):
        return self._linear(in_f, out_f, bias, std)

    def head(self, in_f, vocab, std=0.02):
        return self._linear(in_f, vocab, False, std)

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the head's linear feeds its matmul: x itself at TP=1 (see MegatronLayers.head_input)."""
        return x

    def embedding(self, vocab, dim, std=0.02):
        emb = nn.utils.skip_init(nn.Embedding, vocab, dim)
        w = torch.empty(vocab, dim)
        _normal(std)(w)
        with torch.no_grad():
            emb.weight.copy_(w)
        return emb


def _megatron_classes():
    """Subclasses (not wrappers) so parameter names are the same as the TP=1 torch layers'."""
    from megatron.core import tensor_parallel as mtp

    class Column(mtp.ColumnParallelLinear):  # megatron returns (output, bias); we return output
        def forward(self, x):
            return super().forward(x)[0]

    class Row(mtp.RowParallelLinear):
        def forward(self, x):
            return super().forward(x)[0]

    class Embedding(mtp.VocabParallelEmbedding):  # [S, B, H] output scattered over S under SP
        def __init__(self, *args, config, **kwargs):
            super().__init__(*args, config=config, **kwargs)
            self.sequence_parallel = config.sequence_parallel

        def forward(self, ids):
            x = super().forward(ids)
            return mtp.scatter_to_sequence_parallel_region(x) if self.sequence_parallel else x

    return Column, Row, Embedding


class MegatronLayers:
    def __init__(self, tp: int, sequence_parallel: bool, params_dtype=torch.float32):
        from megatron.core import ModelParallelConfig
        self.tp, self.sequence_parallel = tp, sequence_parallel
        self.config = ModelParallelConfig(
            tensor_model_parallel_size=tp, sequence_parallel=sequence_parallel,
            use_cpu_initialization=True, perform_initialization=True, params_dtype=params_dtype,
            pipeline_dtype=params_dtype, gradient_accumulation_fusion=False,
        )
        self.Column, self.Row, self.Embedding = _megatron_classes()

    def column(self, in_f, out_f, bias=False, std=0.02, gather_output=False):
        return self.Column(in_f, out_f, config=self.config, init_method=_normal(std), bias=bias,
                           gather_output=gather_output)

    def row(self, in_f, out_f, bias=False, std=0.02):
        return self.Row(in_f, out_f, config=self.config, init_method=_normal(std), bias=bias,
                        input_is_parallel=True, skip_bias_add=False)

    def head(self, in_f, vocab, std=0.02):
        return self.column(in_f, vocab, bias=False, std=std)

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the head's column-parallel linear feeds its matmul: the identity whose backward
        all-reduces the gradient over the TP group, or under SP the all-gather along the sequence whose
        backward reduce-scatters. The fused loss (megaspeech/kernels/linear_cross_entropy) takes this
        tensor and the head weight in place of the logits."""
        from megatron.core.tensor_parallel import mappings
        if self.sequence_parallel:
            return mappings.gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=True)
        return mappings.copy_to_tensor_model_parallel_region(x)

    def embedding(self, vocab, dim, std=0.02):
        return self.Embedding(vocab, dim, init_method=_normal(std), config=self.config)


def make_factory(tp: int, sequence_parallel: bool):
    return TorchLayers() if tp == 1 else MegatronLayers(tp, sequence_parallel)


def token_losses(logits: torch.Tensor, labels: torch.Tensor, tp: int) -> torch.Tensor:
    """logits [S, B, V / tp], labels [B, S] -> per-token cross-entropy [B, S] (fp32).
    At TP>1 the vocab-parallel cross entropy avoids gathering the logits."""
    target = labels.t().contiguous()
    if tp > 1:
        from megatron.core import tensor_parallel
        loss = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), target)
    else:
        S, B, V = logits.shape
        loss = F.cross_entropy(logits.float().reshape(S * B, V), target.reshape(-1), reduction="none").view(S, B)
    return loss.t()
