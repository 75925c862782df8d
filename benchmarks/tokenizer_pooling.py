"""What the pooling alone costs, before any training: WER of the untrained tokenizer's continuous path
(Whisper tiny.en's layers below `split_layer`, average pooling by `pool`, repeated back to 50 Hz with
unpool=repeat, the layers above, the decoder; no VQ) vs the unquantized Whisper tiny.en (baseline,
same run), per (split_layer, pool), on LibriVox (real speech) and held-out synthetic speech.

It separates the two losses of a trained tokenizer: the information the pooled frames still hold
(this script) and what the codebook and the trained reader lose (benchmarks/tokenizer_wer.py).
A third number in a setting, `split:pool:code_dim`, adds the factorized codes' linear bottleneck as
training starts it (vq_in / vq_out = the top code_dim principal components of the pooled frames of
the first `--pca_items` utterances of `--pca_data`, the training shards; position-free offsets cancel
in the bypass), so what the projection alone costs is measured too.

    python benchmarks/tokenizer_pooling.py --synthetic runs/tok_corpus/heldout --n_synthetic 20
    python benchmarks/tokenizer_pooling.py --settings 3:4,3:4:32,3:4:128 --pca_data runs/tok_corpus/train
Prints per setting `split=S pool=P [code_dim=C] librivox_wer= librivox_vs_base= synthetic_wer= synthetic_vs_base=`.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.tokenizer_wer import batched, bypassed, librivox, shards  # noqa: E402
from megaspeech.speech.asr import transcribe_base, wer  # noqa: E402
from megaspeech.speech.tokenizer import TokenizerConfig, build_tokenizer, features  # noqa: E402
from megaspeech.speech.whisper_ct2 import load_whisper  # noqa: E402


def continuous_wer(model, whisper, items, bs) -> float:
    return wer([x[1] for x in items], batched(lambda b: bypassed(model, whisper, b), [x[0] for x in items], bs))


@torch.no_grad()
def init_pca(model, audios, bs) -> None:
    """The factorized bottleneck as training initialises it, from these (training) utterances."""
    parts = [model.pooled(*features(audios[i:i + bs], model.conv1.in_channels, model.pool))
             for i in range(0, len(audios), bs)]
    model.init_projection(torch.cat([p[k] for p, k in parts]), torch.cat([model.positions(k) for _, k in parts]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic", help="held-out synthetic `audio` shards (launch/make_speech_corpus.py corpus.split=heldout)")
    p.add_argument("--n_synthetic", type=int, default=20)
    p.add_argument("--settings", default="4:1,4:2,4:4,3:4,2:4", help="comma-separated split_layer:pool")
    p.add_argument("--pca_data", help="training `audio` shards for the code_dim settings' PCA bottleneck")
    p.add_argument("--pca_items", type=int, default=256)
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
    settings = [[int(x) for x in s.split(":")] for s in a.settings.split(",")]
    if any(len(s) == 3 for s in settings) and not a.pca_data:
        p.error("a split:pool:code_dim setting needs --pca_data (the training shards the PCA is fitted on)")
    pca_audio = [x[0] for x in shards(a.pca_data, a.pca_items)] if a.pca_data else None
    for split, pool, *code_dim in settings:
        # built on the same (untrained) Whisper: its modules are reused, not copied
        cfg = TokenizerConfig(split_layer=split, pool=pool, unpool="repeat",
                              code_dim=code_dim[0] if code_dim else None, position_free=bool(code_dim))
        model, _ = build_tokenizer(cfg, whisper)
        model.eval()
        if code_dim:
            init_pca(model, pca_audio, a.batch)
        out = []
        for n, it in sets.items():
            w = continuous_wer(model, whisper, it, a.batch)
            out.append(f"{n}_wer={w:.1f} {n}_vs_base={w / max(base[n], 1e-9):.2f}")
        dim = f" code_dim={code_dim[0]}" if code_dim else ""
        print(f"split={split} pool={pool}{dim} " + " ".join(out), flush=True)


if __name__ == "__main__":
    main()
