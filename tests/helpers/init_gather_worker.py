"""Run by test_init_gather.py under torchrun: build the tiny model at TP=world, gather every
TP-sliced parameter, compare with the TP=1 model built from the same seed. Exit code 0 = equal."""
import sys

import torch
import torch.distributed as dist

from megaspeech.config.load import load_config
from megaspeech.config.schema import PretrainConfig
from megaspeech.model.llm import DecoderLM
from megaspeech.parallel.layers import TorchLayers
from megaspeech.parallel.parallelize import build_model
from megaspeech.parallel.state import destroy_distributed, init_distributed


def main():
    import os
    world = int(os.environ["WORLD_SIZE"])
    cfg = load_config(PretrainConfig, "configs/tiny.yaml", [f"parallel.tensor={world}", "model.qkv_bias=true"])
    layout = init_distributed(world, 1)
    sharded = build_model(cfg, layout)
    full = DecoderLM(cfg.model, TorchLayers(), cfg.padded_vocab_size(), cfg.run.seed)
    ref = full.state_dict()
    bad = []
    for name, p in sharded.named_parameters():
        t = p.detach()
        if getattr(p, "tensor_model_parallel", False):
            parts = [torch.empty_like(t) for _ in range(world)]
            dist.all_gather(parts, t.contiguous())
            t = torch.cat(parts, dim=p.partition_dim)
        if t.shape != ref[name].shape or not torch.equal(t, ref[name]):
            bad.append(name)
    if layout.rank == 0:
        print(f"compared {len(ref)} tensors; differing: {bad}")
    destroy_distributed()
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
