"""WER of ASR through the speech tokenizer's VQ bottleneck vs the unquantized Whisper tiny.en.

Baseline (same run): the converted Whisper tiny.en, standard 30 s encoder, greedy decoding.
Quantized path: audio -> 12.5 Hz codes -> codebook vectors -> layers above the VQ -> decoder
(megaspeech.speech.tokenizer.decode_tokens_to_text), greedy. Also reported: the trained model
with the VQ bypassed (continuous pooled features), code-usage perplexity / utilization on the
held-out audio, and tokenization throughput (seconds of audio per second, `--threads` threads).

Held-out sets: real human speech (LibriVox, pocketsphinx-testdata: never trained on) and
synthetic speech of State of the Union addresses held out from training (audio shards from
launch/make_speech_corpus.py corpus.split=heldout).

    python benchmarks/tokenizer_wer.py --tokenizer runs/speech/tok_tiny/tokenizer \
        --synthetic runs/speech/heldout
Prints `wer_vq=` and `wer_base=` (held-out synthetic speech) last.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from megaspeech.data.shards import open_dataset  # noqa: E402
from megaspeech.speech import audio_shards  # noqa: E402
from megaspeech.speech.asr import greedy_decode, transcribe_base, wer  # noqa: E402
from megaspeech.speech.audio import decode_audio  # noqa: E402
from megaspeech.speech.tokenizer import decode_tokens_to_text, features, load_tokenizer, tokenize_audios  # noqa: E402
from megaspeech.speech.whisper_ct2 import load_whisper  # noqa: E402

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def librivox():
    trans = LIBRIVOX / "transcription"
    if not trans.is_file():
        sys.exit(f"{trans} missing: apt-get install pocketsphinx-testdata")
    out = []
    for line in trans.read_text().splitlines():
        text, _, key = line.rpartition("(")
        out.append((decode_audio(LIBRIVOX / f"{key.strip(') ')}.wav"),
                    text.replace("<s>", "").replace("</s>", "").strip()))
    return out


def synthetic(path, n):
    out = []
    for key, s in open_dataset(path, kind="audio"):
        out.append((decode_audio(audio_shards.audio_bytes(s, key), key), s["transcript"]))
        if len(out) == n:
            break
    return out


def batched(fn, xs, bs):
    out = []
    for i in range(0, len(xs), bs):
        out.extend(fn(xs[i:i + bs]))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--synthetic", required=True, help="held-out `audio` shards")
    p.add_argument("--n_synthetic", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dump", help="write each utterance's reference and hypotheses here (jsonl)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    base = load_whisper()
    model, whisper, cfg = load_tokenizer(a.tokenizer)
    K = model.vq.codebook_size
    print(f"tokenizer={a.tokenizer} split_layer={cfg.split_layer} unpool={cfg.unpool} codebook_size={K} "
          f"threads={a.threads}")
    sets = {"librivox": librivox(), "synthetic": synthetic(a.synthetic, a.n_synthetic)}
    results = {}
    all_codes = []
    for name, items in sets.items():
        audios, refs = [x[0] for x in items], [x[1] for x in items]
        secs = sum(len(x) for x in audios) / 16000
        hyp_base = batched(lambda b: transcribe_base(base, b), audios, a.batch)
        t = time.time()
        codes = batched(lambda b: tokenize_audios(model, b), audios, a.batch)
        t_tok = time.time() - t
        all_codes.extend(codes)
        hyp_vq = batched(lambda b: decode_tokens_to_text(model, whisper, b), codes, a.batch)

        def cont(b):
            pooled, keep = model.pooled(*features(b, model.conv1.in_channels, model.pool))
            with torch.no_grad():
                return [whisper.decode_text(t) for t in greedy_decode(whisper, *model.post(model.unquantized(pooled), keep))]
        hyp_cont = batched(cont, audios, a.batch)
        r = {"wer_base": wer(refs, hyp_base), "wer_vq": wer(refs, hyp_vq), "wer_continuous": wer(refs, hyp_cont),
             "utterances": len(items), "audio_s": secs, "tokenize_audio_s_per_s": secs / t_tok}
        results[name] = r
        if a.dump:
            with open(a.dump, "a") as f:
                for ref, hb, hv, hc in zip(refs, hyp_base, hyp_vq, hyp_cont):
                    f.write(json.dumps({"set": name, "ref": ref, "base": hb, "vq": hv, "vq_bypassed": hc}) + "\n")
        for ref, hb, hv in list(zip(refs, hyp_base, hyp_vq))[:3]:
            print(f"  [{name}] ref: {ref}\n  [{name}] base: {hb}\n  [{name}] vq:   {hv}")
        print(f"{name}: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    flat = torch.from_numpy(np.concatenate(all_codes))
    ppl = float(model.vq.perplexity(flat))
    used = int(torch.unique(flat).numel())
    tok_rate = sum(r["audio_s"] for r in results.values()) / sum(r["audio_s"] / r["tokenize_audio_s_per_s"]
                                                                   for r in results.values())
    print(f"code_perplexity={ppl:.1f} codes_used={used}/{K} tokens={flat.numel()}")
    print(f"tokenize_audio_s_per_s={tok_rate:.1f}")
    lv, sy = results["librivox"], results["synthetic"]
    print(f"librivox_wer_vq={lv['wer_vq']:.2f} librivox_wer_base={lv['wer_base']:.2f}")
    print(f"wer_vq_minus_base={sy['wer_vq'] - sy['wer_base']:.2f}")
    print(f"wer_vq={sy['wer_vq']:.2f}")
    print(f"wer_base={sy['wer_base']:.2f}")


if __name__ == "__main__":
    main()
