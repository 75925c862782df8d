"""Training tokens/s: megaspeech's trainer vs a Hugging Face LlamaForCausalLM of the same shape.

Both train the tiny config's shape on the same batch (global_batch x seq_len tokens per step, same
micro-batches) in this process: ours through the full DeepSpeed engine step (ZeRO-1, clipping,
per-modality loss), the baseline through a plain torch AdamW loop (forward, backward, clip, step).
Ours runs twice: eager, and with `train.compile=true` (per-block torch.compile, compile time excluded
by the warm-up steps); the baseline is eager (HF's default training path).
Usage: python benchmarks/train_throughput.py [--config configs/tiny.yaml] [--steps 8] [overrides]
Prints tokens/s of each, `ratio_eager=`, and `ratio=<ours compiled / hf>` last.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RANK", "0")
os.environ.setdefault("LOCAL_RANK", "0")
os.environ.setdefault("WORLD_SIZE", "1")
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", "29533")

import torch  # noqa: E402

from megaspeech.config.load import load_config  # noqa: E402
from megaspeech.config.schema import PretrainConfig  # noqa: E402


def time_steps(step_fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step_fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn()
    return (time.perf_counter() - t0) / steps


def hf_baseline(cfg: PretrainConfig, batches: list[dict]):
    from transformers import LlamaConfig, LlamaForCausalLM
    m = cfg.model
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.padded_vocab_size(), hidden_size=m.hidden_size, intermediate_size=m.ffn_hidden_size,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
        max_position_embeddings=cfg.train.seq_len, rms_norm_eps=m.norm_eps, rope_theta=m.rope_theta,
        tie_word_embeddings=m.tie_embeddings, attn_implementation="sdpa"))
    opt = torch.optim.AdamW(hf.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                            weight_decay=cfg.optim.weight_decay)

    def step():
        for b in batches:
            logits = hf(input_ids=b["input_ids"]).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["labels"].flatten())
            (loss / len(batches)).backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(PretrainConfig, args.config, ["data.kind=synthetic", "train.progress_bar=false",
                                                    "run.dir=/tmp/megaspeech-bench", *args.overrides])
    from megaspeech.parallel.state import destroy_distributed, init_distributed
    from megaspeech.train.trainer import Trainer
    layout = init_distributed(1, 1)
    eager = Trainer(cfg, layout)
    batches = eager._next_micro_batches()
    tokens = cfg.train.global_batch * cfg.train.seq_len
    print(f"shape: {cfg.model.num_layers} layers x {cfg.model.hidden_size}, {tokens} tokens/step, "
          f"{torch.get_num_threads()} threads")
    hf_step = hf_baseline(cfg, batches)
    hf = tokens / time_steps(hf_step, args.steps)
    ours = tokens / time_steps(lambda: eager.train_step(batches), args.steps)
    compiled = Trainer(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=True)), layout)
    ours_c = tokens / time_steps(lambda: compiled.train_step(batches), args.steps)
    hf = (hf + tokens / time_steps(hf_step, args.steps)) / 2  # baseline measured before and after ours
    print(f"hf_llama_tokens_per_s={hf:.0f}")
    print(f"megaspeech_eager_tokens_per_s={ours:.0f}")
    print(f"megaspeech_compiled_tokens_per_s={ours_c:.0f}")
    print(f"ratio_eager={ours / hf:.3f}")
    destroy_distributed()
    print(f"ratio={ours_c / hf:.3f}")


if __name__ == "__main__":
    main()
