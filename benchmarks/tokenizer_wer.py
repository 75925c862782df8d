"""WER of ASR through the speech tokenizer's VQ bottleneck vs the unquantized Whisper tiny.en.

Baseline (same run): the converted Whisper tiny.en, standard 30 s encoder.
Quantized path: audio -> codes -> codebook vectors -> layers above the VQ -> decoder
(megaspeech.speech.tokenizer.decode_tokens_to_text). Every path decodes with Whisper's temperature
fallback (megaspeech.speech.asr.transcribe_tokens: a looping or unlikely greedy text is resampled at
rising temperature), as Whisper transcribes; `--greedy` decodes greedily only (the figures made before
the fallback was added). Also per set: the trained model with
the VQ bypassed (continuous bottleneck), code usage and perplexity, tokenization throughput
(seconds of audio per second, batched, `--threads` threads).

Held-out sets: real human speech (the `--split` half of LibriVox in pocketsphinx-testdata and the first
`--asterisk` prompts of that half of the Asterisk PBX's English voice, megaspeech.speech.real_speech:
choose and tune on `--split dev`, report `--split test`, the default; never trained on; plus any
`--real DIR` of `audio` shards with transcripts, e.g. from launch/ingest_audio.py, kept out of
training) and synthetic speech of State of the Union addresses held out from training (audio
shards from launch/make_speech_corpus.py corpus.split=heldout).

    python benchmarks/tokenizer_wer.py                      # finds a trained tokenizer under runs/
    python benchmarks/tokenizer_wer.py --tokenizer runs/speech/tok_e2e/tokenizer \
        --synthetic runs/speech/heldout
Prints `wer_vq=` and `wer_base=` of real speech (LibriVox) last, and writes the figures into the
tokenizer directory as eval.json (with the training step they belong to).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from megaspeech.speech import audio_shards
from megaspeech.speech.asr import Fallback, transcribe_base, transcribe_tokens, wer
from megaspeech.speech.real_speech import asterisk, librivox, spell_numbers
from megaspeech.speech.tokenizer import decode_tokens_to_text, features, load_tokenizer, tokenize_audios
from megaspeech.speech.whisper_ct2 import load_whisper

ROOT = Path(__file__).resolve().parents[1]
HOW_TO_TRAIN = """no trained speech tokenizer found under runs/. Train one (CPU recipe: 300 steps, ~30-60 min on 2 cores):
    python launch/make_speech_corpus.py --config configs/speech_corpus.yaml corpus.out_dir=runs/speech/train6400 \\
        corpus.utterances=6400 corpus.workers=2
    python launch/make_speech_corpus.py --config configs/speech_corpus.yaml corpus.split=heldout \\
        corpus.out_dir=runs/speech/heldout corpus.utterances=60
    python launch/train_speech_tokenizer.py --config configs/speech_tokenizer_tiny_e2e.yaml
then run this script again (or pass --tokenizer RUN_DIR/tokenizer)."""


def find_tokenizer() -> Path | None:
    """The most recently written tokenizer dir under runs/ (RUN_DIR/tokenizer/tokenizer.json)."""
    hits = [p.parent for pat in ("runs/*/tokenizer/tokenizer.json", "runs/*/*/tokenizer/tokenizer.json")
            for p in ROOT.glob(pat)]
    return max(hits, key=lambda p: (p / "model.pt").stat().st_mtime) if hits else None


def batched(fn, xs, bs):
    out = []
    for i in range(0, len(xs), bs):
        out.extend(fn(xs[i:i + bs]))
    return out


@torch.no_grad()
def bypassed(model, whisper, audios, fallback: Fallback | None = None) -> list[str]:
    """Transcripts through the tokenizer with the VQ bypassed (the continuous bottleneck)."""
    pooled, keep = model.pooled(*features(audios, model.conv1.in_channels, model.pool))
    enc, keep = model.post(model.unquantized(pooled), keep)
    return [whisper.decode_text(t) for t in transcribe_tokens(whisper, enc, keep, fallback=fallback)]


def evaluate(name, items, base, model, whisper, bs, dump=None, norm=None, fallback=None) -> dict:
    """Figures of one set; `norm` (if given) is applied to every hypothesis (the set's references already are)."""
    norm = norm or (lambda h: h)
    audios, refs = [x[0] for x in items], [x[1] for x in items]
    secs = sum(len(x) for x in audios) / 16000
    hyp_base = [norm(h) for h in batched(lambda b: transcribe_base(base, b, fallback), audios, bs)]
    t = time.time()
    codes = batched(lambda b: tokenize_audios(model, b), audios, bs)
    t_tok = time.time() - t
    hyp_vq = [norm(h) for h in batched(lambda b: decode_tokens_to_text(model, whisper, b, fallback=fallback), codes, bs)]
    hyp_cont = [norm(h) for h in batched(lambda b: bypassed(model, whisper, b, fallback), audios, bs)]
    flat = torch.from_numpy(np.concatenate(codes))
    r = {"wer_base": wer(refs, hyp_base), "wer_vq": wer(refs, hyp_vq), "wer_continuous": wer(refs, hyp_cont),
         "codes_used": int(torch.unique(flat).numel()), "code_perplexity": float(model.vq.perplexity(flat)),
         "utterances": len(items), "audio_s": secs, "tokenize_audio_s_per_s": secs / t_tok}
    if dump:
        with open(dump, "a") as f:
            for ref, hb, hv, hc in zip(refs, hyp_base, hyp_vq, hyp_cont):
                f.write(json.dumps({"set": name, "ref": ref, "base": hb, "vq": hv, "vq_bypassed": hc}) + "\n")
    for ref, hb, hv in list(zip(refs, hyp_base, hyp_vq))[:2]:
        print(f"  [{name}] ref: {ref}\n  [{name}] base: {hb}\n  [{name}] vq:   {hv}")
    print(f"{name}: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", help="tokenizer dir (RUN_DIR/tokenizer); default: the newest under runs/")
    p.add_argument("--synthetic", help="held-out synthetic `audio` shards; default runs/speech/heldout if present")
    p.add_argument("--n_synthetic", type=int, default=60)
    p.add_argument("--real", action="append", default=[], help="more held-out real `audio` shards (repeatable)")
    p.add_argument("--asterisk", type=int, default=120,
                   help="first N Asterisk prompts of >= 3 words of --split (real speech, one voice, 8 kHz; 0: none)")
    p.add_argument("--split", choices=("dev", "test"), default="test",
                   help="half of the real-speech sets: dev to choose and tune, test (default) for reported figures")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dump", help="write each utterance's reference and hypotheses here (jsonl)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding only, no temperature fallback")
    a = p.parse_args()
    tok_dir = Path(a.tokenizer) if a.tokenizer else find_tokenizer()
    if tok_dir is None:
        sys.exit(HOW_TO_TRAIN)
    synth = a.synthetic or (str(ROOT / "runs/speech/heldout") if (ROOT / "runs/speech/heldout").is_dir() else None)
    torch.set_num_threads(a.threads)
    base = load_whisper()
    model, whisper, cfg = load_tokenizer(tok_dir)
    trained = json.loads((tok_dir / "trained_on.json").read_text()) if (tok_dir / "trained_on.json").is_file() else {}
    print(f"tokenizer={tok_dir} step={trained.get('steps')} hours={trained.get('hours')} "
          f"voices={len(trained.get('voices', {}))} split_layer={cfg.split_layer} pool={cfg.pool} "
          f"frame_rate_hz={cfg.frame_rate} unpool={cfg.unpool} codebook_size={cfg.codebook_size} threads={a.threads} "
          f"decoding={'greedy' if a.greedy else 'fallback'} split={a.split}")
    fallback = None if a.greedy else Fallback()
    sets = {}
    if synth:
        sets["synthetic"] = audio_shards.transcribed(synth, a.n_synthetic)
    else:
        print("synthetic: skipped (no runs/speech/heldout; make it with launch/make_speech_corpus.py "
              "corpus.split=heldout corpus.out_dir=runs/speech/heldout corpus.utterances=60)")
    for r in a.real:
        sets[f"real:{r}"] = audio_shards.transcribed(r, 10 ** 9)
    norms = {}
    if a.asterisk:
        try:
            sets["asterisk"], norms["asterisk"] = asterisk(a.split, limit=a.asterisk), spell_numbers
        except FileNotFoundError as e:
            print(f"asterisk: skipped ({e})")
    sets["librivox"] = librivox(a.split)  # last: its figures are printed last
    results = {name: evaluate(name, items, base, model, whisper, a.batch, a.dump, norms.get(name), fallback)
               for name, items in sets.items()}
    secs = sum(r["audio_s"] for r in results.values())
    tok_rate = secs / sum(r["audio_s"] / r["tokenize_audio_s_per_s"] for r in results.values())
    print(f"tokenize_audio_s_per_s={tok_rate:.1f}")
    eval_json = {"step": trained.get("steps"), "frame_rate_hz": cfg.frame_rate, "threads": a.threads,
                 "decoding": "greedy" if a.greedy else "fallback", "split": a.split,
                 "sets": results, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    tmp = tok_dir / f".eval.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(eval_json, indent=1))
    os.replace(tmp, tok_dir / "eval.json")
    if "synthetic" in results:
        sy = results["synthetic"]
        print(f"synthetic_wer_vq={sy['wer_vq']:.2f} synthetic_wer_base={sy['wer_base']:.2f} "
              f"synthetic_wer_vq_minus_base={sy['wer_vq'] - sy['wer_base']:.2f}")
    if "asterisk" in results:
        ak = results["asterisk"]
        print(f"asterisk_wer_vq={ak['wer_vq']:.2f} asterisk_wer_base={ak['wer_base']:.2f} "
              f"asterisk_wer_vq_over_base={ak['wer_vq'] / max(ak['wer_base'], 1e-9):.2f}")
    lv = results["librivox"]
    print(f"wer_vq_over_base={lv['wer_vq'] / max(lv['wer_base'], 1e-9):.2f}")
    print(f"wer_vq={lv['wer_vq']:.2f}")
    print(f"wer_base={lv['wer_base']:.2f}")


if __name__ == "__main__":
    main()
