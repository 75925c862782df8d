"""How much the text-to-token model's speech codes look like the speech tokenizer's own codes of the
same sentences (the interleaved data's speech spans stand in for real speech; GLM-4-Voice 2411.17607).

On held-out pairs of a pipeline run (RUN/speech_shards/heldout: TTS audio of sentences never trained on,
tokenized by the run's speech tokenizer) the text-to-token model of the run (RUN/text_to_token)
generates codes for each transcript at each --temperatures value (seeded sampling; 0 = greedy). Per
setting: codes used, unigram entropy (nats), the rate at which a code repeats the previous one, and
the cross-entropy of the real held-out codes under that setting's unigram (lower = closer). Baseline:
the tokenizer's codes of RUN/speech_shards/unsup (the training speech).

    python benchmarks/text_to_token_codes.py --run runs/glm4voice_toy [--temperatures 0 1] [--n 48]

Prints one line per setting and `entropy_ratio=` (synthetic / real) for each setting last.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def entropy(c: np.ndarray) -> float:
    p = c[c > 0] / c.sum()
    return float(-(p * np.log(p)).sum())


def cross_entropy(real: np.ndarray, model: np.ndarray) -> float:
    q = (model + 0.5) / (model + 0.5).sum()  # add-0.5, so an unused code is not infinitely costly
    return float(-(real * np.log(q)).sum() / real.sum())


def stats(seqs: list[np.ndarray], k: int) -> tuple[np.ndarray, float]:
    counts = sum(np.bincount(np.asarray(s, np.int64), minlength=k) for s in seqs)
    pairs = sum(max(len(s) - 1, 0) for s in seqs)
    return counts, sum(int((np.asarray(s[1:]) == np.asarray(s[:-1])).sum()) for s in seqs) / max(pairs, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a pipeline run dir (launch/pipeline.py run.dir)")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--n", type=int, default=48, help="held-out sentences")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    import torch

    from megaspeech.data.shards import Dataset
    from megaspeech.synth.generate import GenerationConfig, SpeechGenerator
    from megaspeech.checkpoint.offline import load_decoder, resolve
    from megaspeech.vocab import Vocab
    torch.set_num_threads(a.threads)
    run = Path(a.run)
    for need in ("text_to_token", "speech_shards/heldout", "speech_shards/unsup"):
        if not (run / need).exists():
            sys.exit(f"{run / need} missing: run launch/pipeline.py with run.dir={run} --until interleaved first")
    model, vocab, _ = load_decoder(resolve(run / "text_to_token"))
    v = Vocab.load(run / "speech_shards/heldout/vocab.json")
    k = v.speech_size
    held = [s for _, s in Dataset(run / "speech_shards/heldout", v, kind="speech")][:a.n]
    real, real_rep = stats([s["codes"] for _, s in Dataset(run / "speech_shards/unsup", v, kind="speech")], k)
    held_counts, held_rep = stats([s["codes"] for s in held], k)
    print(f"tokenizer codes (baseline): used {(real > 0).sum()}, entropy {entropy(real):.2f}, repeat rate "
          f"{real_rep:.3f}; held-out {len(held)} sentences: {int(held_counts.sum())} codes, CE under the "
          f"training unigram {cross_entropy(held_counts, real):.2f}")
    texts = [s["text"] for s in held]
    words = [max(1, len(s["text"]) * 3 // 4) for s in held]  # ~0.75 words per text token: the length rule's input
    ratios = []
    for t in a.temperatures:
        gen = SpeechGenerator(model, vocab, GenerationConfig(temperature=t, batch_size=len(texts)))
        counts, rep = stats(gen.generate(texts, words), k)
        print(f"T={t:g}: codes {int(counts.sum())}, used {(counts > 0).sum()}, entropy {entropy(counts):.2f}, "
              f"repeat rate {rep:.3f}, held-out CE under its unigram {cross_entropy(held_counts, counts):.2f}", flush=True)
        ratios.append(f"T{t:g}:{entropy(counts) / entropy(real):.3f}")
    print("entropy_ratio=" + ",".join(ratios))


if __name__ == "__main__":
    main()
