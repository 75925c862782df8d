"""Training tokens/s: megaspeech's trainer step vs a Hugging Face decoder of the same shape, same process.

Both train the same shape on the same batch (global_batch x seq_len tokens per step, the same
micro-batches): ours through the full trainer step (DeepSpeed ZeRO-1, clipping, per-modality loss),
the baseline through a plain loop (forward, backward, clip, AdamW step).

CPU (default): the tiny config's shape against HF LlamaForCausalLM + torch AdamW, fp32. Ours runs
eager and with `train.compile=true`; prints `ratio_eager=` and `ratio=<ours compiled / hf>` last.

CUDA (`--device cuda --preset glm9b-slice|llama1b`): the shapes of issue 17 against HF
GlmForCausalLM / LlamaForCausalLM trained as HF Trainer does bf16 (fp32 weights, autocast bf16,
fused AdamW, clip 1.0; /work/shared/gpu/hf_peer.py). Ours runs the preset's config as a user would
(bf16, `train.compile=auto` = compiled on CUDA; `--eager` also times train.compile=false). Prints
tokens/s, MFU (model FLOPs / 989 TFLOP/s), peak GPU memory of each (measured one after the other, HF
first, memory freed between), `mem_ratio=<ours / hf>` and `ratio=<ours / hf>` last.
Usage: python benchmarks/train_throughput.py [--device cuda --preset glm9b-slice] [--steps 8] [overrides]
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import time

os.environ.setdefault("RANK", "0")
os.environ.setdefault("LOCAL_RANK", "0")
os.environ.setdefault("WORLD_SIZE", "1")
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", "29533")

import torch

from megaspeech.config.load import load_config
from megaspeech.config.schema import PretrainConfig

_ONE_GPU = ["parallel.tensor=1", "parallel.pipeline=1", "parallel.sequence_parallel=false", "parallel.zero_stage=1",
            "train.activation_checkpointing=none", "train.precision=bf16", "checkpoint.interval=0",
            "checkpoint.save_at_end=false", "metrics.wandb=disabled", "metrics.tensorboard=false"]
PRESETS = {  # issue 17's shapes: GLM-4-9B's layers (4 of them) and vocabulary; a Llama-3.2-1B-like decoder
    "glm9b-slice": ("configs/9b.yaml", _ONE_GPU + [
        "model.num_layers=4", "train.seq_len=8192", "train.micro_batch=1", "train.global_batch=4"]),
    "llama1b": ("configs/9b.yaml", _ONE_GPU + [
        "model.family=llama", "model.num_layers=16", "model.hidden_size=2048", "model.ffn_hidden_size=8192",
        "model.num_heads=32", "model.num_kv_heads=8", "model.rope_fraction=1.0", "model.qkv_bias=false",
        "model.norm_eps=1e-5", "train.seq_len=4096", "train.micro_batch=2", "train.global_batch=8"]),
}


def time_steps(step_fn, steps: int, warmup: int = 2, sync=lambda: None) -> float:
    for _ in range(warmup):
        step_fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn()
    sync()
    return (time.perf_counter() - t0) / steps


def hf_model(cfg: PretrainConfig):
    m = cfg.model
    common = dict(vocab_size=cfg.padded_vocab_size(), hidden_size=m.hidden_size, intermediate_size=m.ffn_hidden_size,
                  num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
                  max_position_embeddings=cfg.train.seq_len, rms_norm_eps=m.norm_eps, rope_theta=m.rope_theta,
                  tie_word_embeddings=m.tie_embeddings, attn_implementation="sdpa")
    if m.family == "glm":
        from transformers import GlmConfig, GlmForCausalLM
        return GlmForCausalLM(GlmConfig(**common, head_dim=m.head_dim, partial_rotary_factor=m.rope_fraction,
                                        attention_bias=m.qkv_bias, pad_token_id=None))
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(**common))


def hf_baseline(cfg: PretrainConfig, batches: list[dict], device: torch.device):
    cuda = device.type == "cuda"
    with torch.device(device):
        hf = hf_model(cfg)
    opt = torch.optim.AdamW(hf.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                            weight_decay=cfg.optim.weight_decay, fused=cuda or None)
    batches = [{k: b[k].to(device) for k in ("input_ids", "labels")} for b in batches]

    def step():
        for b in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = hf(input_ids=b["input_ids"]).logits
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), b["labels"].flatten())
            (loss / len(batches)).backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, hf, opt


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def cpu_ratios(cfg, layout, steps: int, tokens: int) -> None:
    """Ours eager and compiled vs HF Llama eager, fp32, on the CPU; prints ratio_eager= and ratio=."""
    from megaspeech.train.task_spec import LMTask
    from megaspeech.train.trainer import Trainer
    with_compile = lambda c: dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=c))  # noqa: E731
    eager = Trainer(with_compile(False), layout, LMTask(with_compile(False), layout))
    batches = eager._next_micro_batches()
    eager.close_data()
    hf_step, *_ = hf_baseline(cfg, batches, torch.device("cpu"))
    hf = tokens / time_steps(hf_step, steps)
    ours = tokens / time_steps(lambda: eager.train_step(batches), steps)
    compiled = Trainer(with_compile(True), layout, LMTask(with_compile(True), layout))
    ours_c = tokens / time_steps(lambda: compiled.train_step(batches), steps)
    hf = (hf + tokens / time_steps(hf_step, steps)) / 2  # baseline measured before and after ours
    print(f"hf_llama_tokens_per_s={hf:.0f}")
    print(f"megaspeech_eager_tokens_per_s={ours:.0f}")
    print(f"megaspeech_compiled_tokens_per_s={ours_c:.0f}")
    print(f"ratio_eager={ours / hf:.3f}")
    print(f"ratio={ours_c / hf:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default=None, help="default: configs/tiny.yaml, or the preset's config")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None)
    p.add_argument("--eager", action="store_true", help="CUDA: also time ours with train.compile=false")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    base, preset = PRESETS[args.preset] if args.preset else ("configs/tiny.yaml", [])
    cfg = load_config(PretrainConfig, args.config or base, [
        *preset, "data.kind=synthetic", "train.progress_bar=false", "run.dir=/tmp/megaspeech-bench", *args.overrides])
    from megaspeech import accounting
    from megaspeech.parallel.state import destroy_distributed, init_distributed
    from megaspeech.train.metrics import peak_tflops
    from megaspeech.train.task_spec import LMTask
    from megaspeech.train.trainer import Trainer
    layout = init_distributed(1, 1)
    with_compile = lambda c: dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=c))  # noqa: E731
    tokens = cfg.train.global_batch * cfg.train.seq_len
    m = cfg.model
    print(f"shape: {m.family} {m.num_layers} layers x {m.hidden_size}, vocab {cfg.padded_vocab_size()}, "
          f"seq {cfg.train.seq_len}, {tokens} tokens/step, device {args.device}, {torch.get_num_threads()} threads")

    if args.device == "cpu":  # as before issue 17: eager and compiled vs HF Llama eager, fp32
        cpu_ratios(cfg, layout, args.steps, tokens)
        destroy_distributed()
        return

    dev, sync = torch.device("cuda"), torch.cuda.synchronize
    peak = peak_tflops(cfg.train.peak_tflops) * 1e12
    fpt = accounting.flops_per_token(cfg)
    mem = lambda: torch.cuda.max_memory_allocated() / 2**30  # noqa: E731
    results = {}

    # The same micro-batches for everyone, read as the trainer reads them (the step's own copy to the GPU is timed).
    from megaspeech.data.loader import build_train_loader
    from megaspeech.data.prefetch import read_step
    loader = build_train_loader(cfg.data, cfg.vocab, seq_len=cfg.train.seq_len, micro_batch=cfg.train.micro_batch,
                                dp_rank=0, dp_size=1, seed=cfg.run.seed)
    batches = read_step(iter(loader), loader, cfg.grad_accum_steps(1), pin=True).batches

    # HF first, so that anything left allocated after a run can only count against ours.
    start = torch.cuda.memory_allocated() / 2**30
    hf_step, hf, opt = hf_baseline(cfg, batches, dev)
    torch.cuda.reset_peak_memory_stats()
    results["hf"] = (tokens / time_steps(hf_step, args.steps, warmup=3, sync=sync), mem(), start)
    del hf_step, hf, opt
    free()

    def run_ours(name: str, c) -> None:
        start = torch.cuda.memory_allocated() / 2**30
        tr = Trainer(with_compile(c), layout, LMTask(with_compile(c), layout))
        torch.cuda.reset_peak_memory_stats()
        tps = tokens / time_steps(lambda: tr.train_step(batches), args.steps, warmup=3, sync=sync)
        results[name] = (tps, mem(), start)
        tr.close_data()
        getattr(tr.engine, "destroy", lambda: None)()  # DeepSpeed releases its hooks and buffers

    run_ours("megaspeech", "auto")
    free()
    if args.eager:
        run_ours("megaspeech_eager", False)
        free()
    for name, (tps, gib, start) in results.items():
        print(f"{name}_tokens_per_s={tps:.0f}")
        print(f"{name}_mfu={fpt * tps / peak:.3f}")
        print(f"{name}_peak_mem_gib={gib:.1f}")
        print(f"{name}_mem_before_gib={start:.1f}")  # allocated before its model was built (leftovers)
    if args.eager:
        print(f"ratio_eager={results['megaspeech_eager'][0] / results['hf'][0]:.3f}")
    print(f"mem_ratio={results['megaspeech'][1] / results['hf'][1]:.3f}")
    destroy_distributed()
    print(f"ratio={results['megaspeech'][0] / results['hf'][0]:.3f}")


if __name__ == "__main__":
    main()
