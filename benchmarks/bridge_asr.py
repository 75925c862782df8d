"""Bridge-model ASR (arXiv 2312.03668): CTC compression vs strided convolution, full vs frozen vs LoRA.

    python benchmarks/bridge_asr.py --budget smoke   # minutes on 2 CPU cores; small / full: longer
    python benchmarks/bridge_asr.py --config configs/bridge_smollm2.yaml --steps 300 --train-utts 800

Each variant trains the same config (Whisper tiny.en encoder, SmolLM2-135M LM by default) for the same
steps through the project's Trainer (DeepSpeed, one process), then transcribes held-out TTS speech of
held-out text (launch/make_speech_corpus.py split=heldout) and the 5 LibriVox utterances of real human
speech (pocketsphinx-testdata; evaluation only, never training) greedily through the LM. Printed per
variant: WER (LM), WER of the CTC head's own greedy output, the sequence-length reduction (encoder
frames / LM speech positions), trained parameters, LM positions per second; then ratios against the
baseline `conv_full` (the paper's convolution bridge, fully fine-tuned) measured in the same run.
The corpora are written once under --data and reused; each variant's figures are kept in
OUT/<variant>/result.json and a rerun with the same resolved config reuses them (--fresh retrains).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from megaspeech.fs import write_atomic

BUDGETS = {  # train utterances, held-out utterances, steps, micro-batch
    "smoke": dict(train_utts=64, heldout_utts=8, steps=8, micro=4),
    "small": dict(train_utts=1200, heldout_utts=60, steps=300, micro=4),
    "full": dict(train_utts=2000, heldout_utts=100, steps=2000, micro=8),
}
VARIANTS = {  # the CTC bridge reads the LM's embeddings of its units too (bridge.ctc_embed; _features: without)
    "ctc_full": ["bridge.kind=ctc", "bridge.ctc_embed=true", "bridge.lm_mode=full"],
    "ctc_lora": ["bridge.kind=ctc", "bridge.ctc_embed=true", "bridge.lm_mode=lora"],
    "ctc_frozen": ["bridge.kind=ctc", "bridge.ctc_embed=true", "bridge.lm_mode=frozen"],
    "conv_full": ["bridge.kind=conv", "bridge.ctc_embed=false", "bridge.lm_mode=full"],
    "ctc_full_features": ["bridge.kind=ctc", "bridge.ctc_embed=false", "bridge.lm_mode=full"],
}
BASELINE = "conv_full"


def ensure_corpus(out: Path, split: str, n: int) -> Path:
    from megaspeech.speech.corpus import CorpusConfig, build_corpus
    if not (out / "manifest.json").is_file():
        build_corpus(CorpusConfig(out_dir=str(out), split=split, utterances=n, part_size=50, max_words=16))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="smoke")
    p.add_argument("--config", default="configs/bridge_smollm2.yaml")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--train-utts", type=int, default=None)
    p.add_argument("--heldout-utts", type=int, default=None)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--data", default="runs/bench_bridge_data")
    p.add_argument("--out", default="runs/bench_bridge_asr")
    p.add_argument("--fresh", action="store_true", help="retrain variants whose result.json is already there")
    p.add_argument("--split", choices=("dev", "test"), default="test",
                   help="LibriVox half (megaspeech.speech.real_speech): dev to choose between variants, test to report")
    p.add_argument("--threads", type=int, default=2, help="torch threads (2: this machine's cores)")
    p.add_argument("--extra", nargs="*", default=[], help="more dotted overrides for every variant")
    a = p.parse_args(argv)
    b = dict(BUDGETS[a.budget])
    b.update({k: v for k, v in (("steps", a.steps), ("train_utts", a.train_utts), ("heldout_utts", a.heldout_utts)) if v})

    import torch
    torch.set_num_threads(a.threads)
    from megaspeech.config.load import load_config
    from megaspeech.config.schema import PretrainConfig
    from megaspeech.speech.real_speech import librivox
    from megaspeech.bridge.evaluate import (bench_overrides, dataset_items, run_variant,
                                               start_single_process)
    data = Path(a.data)
    train = ensure_corpus(data / f"train{b['train_utts']}", "train", b["train_utts"])
    heldout = ensure_corpus(data / f"heldout{b['heldout_utts']}", "heldout", b["heldout_utts"])
    evals = {"tts": dataset_items(str(heldout)), "librivox": librivox(a.split)}
    layout = start_single_process()
    results = {}
    for name in a.variants.split(","):
        overrides = [*bench_overrides(train, b["steps"], b["micro"]), *VARIANTS[name], *a.extra]
        cfg = load_config(PretrainConfig, ROOT / a.config if not Path(a.config).is_absolute() else a.config, overrides)
        results[name] = run_variant(name, cfg, Path(a.out), layout, evals, fresh=a.fresh,
                                    cache=Path(a.data) / "results")
        for k, v in results[name].items():
            print(f"{name}.{k}={v:.4g}" if isinstance(v, float) else f"{name}.{k}={v}", flush=True)
    if BASELINE in results:
        base = results[BASELINE]
        for name, r in results.items():
            if name == BASELINE:
                continue
            for k in ("wer_tts", "wer_librivox", "length_reduction_tts", "trained_params", "lm_tokens_per_s"):
                if base[k]:
                    print(f"{name}.{k}_vs_{BASELINE}={r[k] / base[k]:.3f}")
    print(f"budget={a.budget} steps={b['steps']} train_utts={b['train_utts']} heldout_utts={len(evals['tts'])} "
          f"librivox_utts={len(evals['librivox'])} config={a.config}")
    write_atomic(Path(a.out) / "results.json", json.dumps({"budget": b, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
