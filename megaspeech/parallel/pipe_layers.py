"""Pipeline-stage forms of the model's layers that carry doc_ids from stage to stage.

DeepSpeed's PipelineModule feeds each layer the previous layer's output and sends a stage's output
to the next stage; a tuple of tensors travels whole (integer tensors are sent but get no gradient).
With `data.document_mask`, the first stage's input is (input_ids, doc_ids) and every layer passes
doc_ids on beside the hidden states, so each stage builds the same attention mask (once per
micro-batch: `attention_mask` is cached on the doc_ids tensor). The subclasses add no parameters,
so names and checkpoints are those of the plain layers.
"""
from __future__ import annotations

import torch

from megaspeech.model.attention import attention_mask
from megaspeech.model.llm import Block, Embedding, Head


class DocEmbedding(Embedding):
    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, doc_ids = inputs
        return super().forward(input_ids), doc_ids


class DocBlock(Block):
    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, doc_ids = inputs
        return super().forward(x, attention_mask(doc_ids, self.attn.impl)), doc_ids


class DocHead(Head):
    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return super().forward(inputs[0])


DOC_LAYERS = {Embedding: DocEmbedding, Block: DocBlock, Head: DocHead}
