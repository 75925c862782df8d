"""LaSyn (arXiv 2310.05374): bridge ASR WER without LaSyn, with the fixed-projection synthesizer, and with
the diffusion synthesizer, at the same training budget (steps x micro-batch rows).

    python benchmarks/lasyn.py --budget smoke     # small / full: longer

1. corpora: TTS speech of training text (the only speech the models see), held-out TTS speech of
   held-out text, and LibriVox real human speech (pocketsphinx-testdata; evaluation only);
2. two synthesizers trained on (text, Whisper-encoder latent) pairs of the training speech
   (megaspeech/bridge/lasyn_training.py);
3. the bridge (configs/bridge_smollm2.yaml) trained three times for the same steps: real speech only;
   with `bridge.lasyn_ratio` of each micro-batch synthesized from text-only sentences (`--text`, by
   default the State of the Union training addresses) by either synthesizer;
4. WER (LM greedy and CTC greedy) on both held-out sets; ratios against `no_lasyn` from the same run.
The paper's direction: 65.6% -> 50.8% WER (LibriSpeech test-clean, its low-resource setup).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from benchmarks.bridge_asr import ensure_corpus
from megaspeech.fs import write_atomic

BUDGETS = {  # train utterances, held-out, bridge steps, micro-batch, synthesizer steps
    "smoke": dict(train_utts=64, heldout_utts=8, steps=8, micro=4, synth_steps=100),
    "small": dict(train_utts=1200, heldout_utts=60, steps=300, micro=4, synth_steps=600),
    "full": dict(train_utts=2000, heldout_utts=100, steps=2000, micro=8, synth_steps=3000),
}
BASELINE = "no_lasyn"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="smoke")
    p.add_argument("--config", default="configs/bridge_smollm2.yaml")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--synth-steps", type=int, default=None)
    p.add_argument("--train-utts", type=int, default=None)
    p.add_argument("--heldout-utts", type=int, default=None)
    p.add_argument("--ratio", type=float, default=0.5, help="bridge.lasyn_ratio of the LaSyn runs")
    p.add_argument("--synth-hidden", type=int, default=192, help="synthesizer width (synth.hidden)")
    p.add_argument("--text", default="sotu", help="text-only corpus spec for synthesized rows")
    p.add_argument("--variants", default="no_lasyn,projection,diffusion",
                   help="no_lasyn, projection, diffusion; a _uniform suffix trains that synthesizer on evenly "
                        "split durations instead of the CTC alignment")
    p.add_argument("--data", default="runs/bench_bridge_data")
    p.add_argument("--out", default="runs/bench_lasyn")
    p.add_argument("--fresh", action="store_true", help="retrain variants whose result.json is already there")
    p.add_argument("--split", choices=("dev", "test"), default="test",
                   help="LibriVox half (megaspeech.speech.real_speech): dev to choose between variants, test to report")
    p.add_argument("--threads", type=int, default=2, help="torch threads (2: this machine's cores)")
    p.add_argument("--extra", nargs="*", default=[], help="more dotted overrides for every bridge run")
    a = p.parse_args(argv)
    b = dict(BUDGETS[a.budget])
    b.update({k: v for k, v in (("steps", a.steps), ("synth_steps", a.synth_steps), ("train_utts", a.train_utts),
                                ("heldout_utts", a.heldout_utts)) if v})

    import torch
    torch.set_num_threads(a.threads)
    from megaspeech.config.load import load_config
    from megaspeech.config.schema import PretrainConfig
    from megaspeech.speech.real_speech import librivox
    from megaspeech.bridge.evaluate import (bench_overrides, dataset_items, run_variant,
                                               start_single_process)
    from megaspeech.bridge.lasyn import LaSynConfig
    from megaspeech.bridge.lasyn_training import LaSynTrainConfig, train_lasyn, trained_summary
    data, out = Path(a.data), Path(a.out)
    train = ensure_corpus(data / f"train{b['train_utts']}", "train", b["train_utts"])
    heldout = ensure_corpus(data / f"heldout{b['heldout_utts']}", "heldout", b["heldout_utts"])
    evals = {"tts": dataset_items(str(heldout)), "librivox": librivox(a.split)}
    cfg_path = ROOT / a.config if not Path(a.config).is_absolute() else Path(a.config)
    base = load_config(PretrainConfig, cfg_path, [f"bridge.train={train}", *a.extra])
    layout = start_single_process()
    results = {}
    for name in a.variants.split(","):
        extra = []
        if name != BASELINE:
            kind, _, align = name.partition("_")  # projection | diffusion [_uniform]
            synth_path = out / f"synth_{name}.pt"
            sc = LaSynTrainConfig(data=str(train), out=str(synth_path), encoder=base.bridge.encoder,
                                  encoder_dim=base.bridge.encoder_dim, seed=base.run.seed, steps=b["synth_steps"],
                                  batch=16, threads=a.threads, align=align or "ctc",
                                  synth=LaSynConfig(kind=kind, hidden=a.synth_hidden))
            s = (None if a.fresh else trained_summary(sc)) or train_lasyn(sc)
            print(f"{name}.synth_first_loss={s['first_loss']:.4g}\n{name}.synth_final_loss={s['final_loss']:.4g}", flush=True)
            extra = [f"bridge.lasyn={synth_path}", f"bridge.lasyn_ratio={a.ratio}", f"bridge.lasyn_text={a.text}"]
        cfg = load_config(PretrainConfig, cfg_path, [*bench_overrides(train, b["steps"], b["micro"]), *extra, *a.extra])
        results[name] = run_variant(name, cfg, out, layout, evals, fresh=a.fresh, cache=data / "results")
        for k, v in results[name].items():
            print(f"{name}.{k}={v:.4g}" if isinstance(v, float) else f"{name}.{k}={v}", flush=True)
    if BASELINE in results:
        for name, r in results.items():
            for k in ("wer_tts", "wer_librivox", "ctc_wer_tts", "ctc_wer_librivox"):
                if name != BASELINE and results[BASELINE].get(k):
                    print(f"{name}.{k}_vs_{BASELINE}={r[k] / results[BASELINE][k]:.3f}")
    print(f"budget={a.budget} steps={b['steps']} micro_batch={b['micro']} synth_steps={b['synth_steps']} "
          f"ratio={a.ratio} train_utts={b['train_utts']} heldout_utts={len(evals['tts'])} "
          f"librivox_utts={len(evals['librivox'])}")
    write_atomic(out / "results.json", json.dumps({"budget": b, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
