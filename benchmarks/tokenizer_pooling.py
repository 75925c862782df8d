"""What the pooling alone costs, before any training: WER of the untrained tokenizer's continuous path
(Whisper tiny.en's layers below `split_layer`, average pooling by `pool`, repeated back to 50 Hz with
unpool=repeat, the layers above, the decoder; no VQ) vs the unquantized Whisper tiny.en (baseline,
same run), per (split_layer, pool), on LibriVox (real speech) and held-out synthetic speech.

It separates the two losses of a trained tokenizer: the information the pooled frames still hold
(this script) and what the codebook and the trained reader lose (benchmarks/tokenizer_wer.py).
A third number in a setting, `split:pool:code_dim`, adds the factorized codes' linear bottleneck as
training starts it (vq_in / vq_out = the top code_dim principal components of the pooled frames of
the first `--pca_items` utterances of `--pca_data`, the training shards; position-free offsets cancel
in the bypass), so what the projection alone costs is measured too. A fourth, `split:pool:code_dim:K`
(code_dim 0: no projection), adds a K-code codebook initialised as training initialises it (distinct
frames, then `--ema_epochs` EMA passes of online k-means over the same frames), and reports WER through
the codes too (`vq_wer`): what the quantization costs before any layer is trained to read it.

    python benchmarks/tokenizer_pooling.py --synthetic runs/tok_corpus/heldout --n_synthetic 20
    python benchmarks/tokenizer_pooling.py --settings 3:4,3:4:32,3:4:128 --pca_data runs/tok_corpus/train
    python benchmarks/tokenizer_pooling.py --settings 3:4:128:4096,3:4:0:4096 --pca_data runs/tok_corpus/train \
        --pca_items 2400
Prints per setting `split=S pool=P [code_dim=C] [codes=K] librivox_wer= librivox_vs_base= [librivox_vq_wer=
librivox_vq_vs_base=] synthetic_...`.
"""
import argparse
import os

import torch

from benchmarks.tokenizer_wer import batched, bypassed, shards
from megaspeech.speech.real_speech import asterisk, librivox, spell_numbers
from megaspeech.speech.asr import Fallback, transcribe_base, wer
from megaspeech.speech.tokenizer import (TokenizerConfig, build_tokenizer, decode_tokens_to_text,
                                         features, tokenize_audios)
from megaspeech.speech.tokenizer_init import init_bottleneck
from megaspeech.speech.whisper_ct2 import load_whisper


def set_wer(items, hyps, name) -> float:
    """WER of one set; the Asterisk references spell numbers, so its hypotheses are spelt too."""
    return wer([x[1] for x in items], [spell_numbers(h) if name == "asterisk" else h for h in hyps])


def continuous_wer(model, whisper, items, bs, name, fallback) -> float:
    return set_wer(items, batched(lambda b: bypassed(model, whisper, b, fallback), [x[0] for x in items], bs), name)


def vq_wer(model, whisper, items, bs, name, fallback) -> float:
    codes = batched(lambda b: tokenize_audios(model, b), [x[0] for x in items], bs)
    return set_wer(items, batched(lambda b: decode_tokens_to_text(model, whisper, b, fallback=fallback), codes, bs),
                   name)


@torch.no_grad()
def init_from(model, audios, bs, seed: int, ema_epochs: int | None) -> None:
    """The bottleneck as training initialises it, from these (training) utterances: the projection,
    and with ema_epochs given the codebook too (train_tokenizer.init_bottleneck)."""
    parts = [model.pooled(*features(audios[i:i + bs], model.conv1.in_channels, model.pool))
             for i in range(0, len(audios), bs)]
    vecs, pos = torch.cat([p[k] for p, k in parts]), torch.cat([model.positions(k) for _, k in parts])
    if ema_epochs is None:
        model.init_projection(vecs, pos)
    else:
        init_bottleneck(model, vecs, pos, seed, ema_epochs)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic", help="held-out synthetic `audio` shards (launch/make_speech_corpus.py corpus.split=heldout)")
    p.add_argument("--n_synthetic", type=int, default=20)
    p.add_argument("--settings", default="4:1,4:2,4:4,3:4,2:4", help="comma-separated split_layer:pool")
    p.add_argument("--pca_data", help="training `audio` shards for the code_dim settings' PCA bottleneck")
    p.add_argument("--pca_items", type=int, default=256)
    p.add_argument("--ema_epochs", type=int, default=5, help="k-means passes of a split:pool:code_dim:K setting")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--asterisk", type=int, default=0, help="also the first N Asterisk prompts (real speech)")
    p.add_argument("--real_split", choices=("dev", "test"), default="dev",
                   help="half of LibriVox/Asterisk (megaspeech.speech.real_speech): dev, since this script chooses settings")
    p.add_argument("--fallback", action="store_true", help="decode with Whisper's temperature fallback (default greedy)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    sets = {"librivox": librivox(a.real_split)}
    if a.asterisk:
        sets["asterisk"] = asterisk(a.real_split, limit=a.asterisk)
    if a.synthetic:
        sets["synthetic"] = shards(a.synthetic, a.n_synthetic)
    whisper = load_whisper()
    fallback = Fallback() if a.fallback else None
    with torch.no_grad():
        base = {n: set_wer(it, batched(lambda b: transcribe_base(whisper, b, fallback), [x[0] for x in it], a.batch), n)
                for n, it in sets.items()}
    print(" ".join(f"{n}_wer_base={v:.1f}" for n, v in base.items()))
    settings = [[int(x) for x in s.split(":")] for s in a.settings.split(",")]
    if any(len(s) not in (2, 3, 4) for s in settings):
        p.error(f"--settings {a.settings}: each is split:pool, split:pool:code_dim or split:pool:code_dim:K")
    if any(len(s) > 2 for s in settings) and not a.pca_data:
        p.error("a split:pool:code_dim[:K] setting needs --pca_data (the training shards the bottleneck is fitted on)")
    pca_audio = [x[0] for x in shards(a.pca_data, a.pca_items)] if a.pca_data else None
    for split, pool, *rest in settings:
        code_dim, codes = (rest + [None, None])[:2]
        # built on the same (untrained) Whisper: its modules are reused, not copied
        cfg = TokenizerConfig(split_layer=split, pool=pool, unpool="repeat", code_dim=code_dim or None,
                              position_free=bool(rest), **({"codebook_size": codes} if codes else {}))
        model, _ = build_tokenizer(cfg, whisper)
        model.eval()
        if rest:
            init_from(model, pca_audio, a.batch, a.seed, a.ema_epochs if codes else None)
        out = []
        for n, it in sets.items():
            w = continuous_wer(model, whisper, it, a.batch, n, fallback)
            out.append(f"{n}_wer={w:.1f} {n}_vs_base={w / max(base[n], 1e-9):.2f}")
            if codes:
                w = vq_wer(model, whisper, it, a.batch, n, fallback)
                out.append(f"{n}_vq_wer={w:.1f} {n}_vq_vs_base={w / max(base[n], 1e-9):.2f}")
        tag = (f" code_dim={code_dim}" if rest else "") + (f" codes={codes}" if codes else "")
        print(f"split={split} pool={pool}{tag} " + " ".join(out), flush=True)


if __name__ == "__main__":
    main()
