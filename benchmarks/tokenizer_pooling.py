"""What the pooling alone costs, before any training: WER of the untrained tokenizer's continuous path
(Whisper tiny.en's layers below `split_layer`, average pooling by `pool`, repeated back to 50 Hz with
unpool=repeat, the layers above, the decoder; no VQ) vs the unquantized Whisper tiny.en (baseline,
same run), per (split_layer, pool), on LibriVox (real speech) and held-out synthetic speech.

It separates the two losses of a trained tokenizer: the information the pooled frames still hold
(this script) and what the codebook and the trained reader lose (benchmarks/tokenizer_wer.py).

    python benchmarks/tokenizer_pooling.py --synthetic runs/tok_corpus/heldout --n_synthetic 20
Prints per setting `split=S pool=P librivox_wer= librivox_vs_base= synthetic_wer= synthetic_vs_base=`.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.tokenizer_wer import batched, bypassed, librivox, shards  # noqa: E402
from megaspeech.speech.asr import transcribe_base, wer  # noqa: E402
from megaspeech.speech.tokenizer import TokenizerConfig, build_tokenizer  # noqa: E402
from megaspeech.speech.whisper_ct2 import load_whisper  # noqa: E402


def continuous_wer(model, whisper, items, bs) -> float:
    return wer([x[1] for x in items], batched(lambda b: bypassed(model, whisper, b), [x[0] for x in items], bs))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic", help="held-out synthetic `audio` shards (launch/make_speech_corpus.py corpus.split=heldout)")
    p.add_argument("--n_synthetic", type=int, default=20)
    p.add_argument("--settings", default="4:1,4:2,4:4,3:4,2:4", help="comma-separated split_layer:pool")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    sets = {"librivox": librivox()}
    if a.synthetic:
        sets["synthetic"] = shards(a.synthetic, a.n_synthetic)
    whisper = load_whisper()
    with torch.no_grad():
        base = {n: wer([x[1] for x in it], batched(lambda b: transcribe_base(whisper, b), [x[0] for x in it], a.batch))
                for n, it in sets.items()}
    print(" ".join(f"{n}_wer_base={v:.1f}" for n, v in base.items()))
    for s in a.settings.split(","):
        split, pool = (int(x) for x in s.split(":"))
        # built on the same (untrained) Whisper: its modules are reused, not copied
        model, _ = build_tokenizer(TokenizerConfig(split_layer=split, pool=pool, unpool="repeat"), whisper)
        model.eval()
        out = []
        for n, it in sets.items():
            w = continuous_wer(model, whisper, it, a.batch)
            out.append(f"{n}_wer={w:.1f} {n}_vs_base={w / max(base[n], 1e-9):.2f}")
        print(f"split={split} pool={pool} " + " ".join(out), flush=True)


if __name__ == "__main__":
    main()
