"""Bridge-model forward + backward time per `bridge.lm_mode` (full / frozen / LoRA), same micro-batches.

    python benchmarks/bridge_step.py                       # SmolLM2-135M + Whisper tiny.en, bf16
    python benchmarks/bridge_step.py --data runs/bench_bridge_data/train400 --batches 4

Each mode builds the config's model (megaspeech.bridge.task.BridgeTask, as the trainer does) and
times the joint loss's forward and backward on the same `--batches` micro-batches of the loader (after
one warm-up batch; no optimizer step, whose cost depends on the trained parameters only). Prints
seconds per micro-batch per mode and `<mode>.s_vs_full=`, the ratio against full fine-tuning measured
in the same run. A frozen or LoRA LM has less to differentiate, so its ratio should be below 1: before
`splice` built its `[S, B, H]` rows contiguous it was 21.4 here (torch.matmul copied every frozen weight once
per position of a transposed input).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/bridge_smollm2.yaml")
    p.add_argument("--data", default="runs/bench_bridge_data/train_step16",
                   help="`audio` dataset with transcripts (written here with 16 TTS utterances if missing)")
    p.add_argument("--modes", default="full,frozen,lora")
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--extra", nargs="*", default=[], help="more dotted overrides")
    a = p.parse_args(argv)

    import torch
    torch.set_num_threads(a.threads)
    from megaspeech.config.load import load_config
    from megaspeech.config.schema import PretrainConfig
    from megaspeech.bridge.evaluate import ensure_smollm2, start_single_process
    from megaspeech.speech.corpus import CorpusConfig, build_corpus
    from megaspeech.bridge.task import BridgeTask
    from megaspeech.train.loss import LMLoss

    data = Path(a.data)
    if not (data / "manifest.json").is_file():
        build_corpus(CorpusConfig(out_dir=str(data), split="train", utterances=max(16, 4 * (a.batches + 1)),
                                  part_size=50, max_words=16))
    layout = start_single_process()
    times = {}
    for mode in a.modes.split(","):
        cfg = load_config(PretrainConfig, ROOT / a.config, [f"bridge.lm_mode={mode}", f"bridge.train={data}",
                                                           "run.dir=/nonexistent-unused", *a.extra])
        ensure_smollm2(cfg)
        task = BridgeTask(cfg, layout)
        model = task.model.to(torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32)
        it = iter(task.build_loader())
        batches = [next(it) for _ in range(a.batches + 1)]
        lm_loss = LMLoss(1)
        spent = []
        for i, b in enumerate(batches):
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            task.begin_step()
            task.micro_loss(model, b, torch.device("cpu"), lm_loss).backward()
            if i:  # the first batch warms up
                spent.append(time.perf_counter() - t)
        times[mode] = sum(spent) / len(spent)
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"{mode}.s_per_micro_batch={times[mode]:.3f} {mode}.trained_params={trained}", flush=True)
        del task, model
    if "full" in times:
        for mode, t in times.items():
            if mode != "full":
                print(f"{mode}.s_vs_full={t / times['full']:.3f}")
    print(f"config={a.config} micro_batch={cfg.train.micro_batch} precision={cfg.train.precision} "
          f"threads={a.threads} batches={a.batches}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
