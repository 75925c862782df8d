"""What the bridge model's LM can read before any training: its loss on held-out transcripts when the
speech slot (the positions before the prompt, where BridgeLM splices the bridge's output) holds

    none       nothing: the LM's prior for the transcript after the prompt (the baseline)
    bpe        the transcript's own token embeddings: a perfect bridge into the LM's token space
    chars      the embeddings of its characters one by one (what a perfect CTC head gives through
               bridge.ctc_embed, before the projector has learnt anything)

through the same splice, labels and LM as training (megaspeech/bridge/layer.py, speech_lm.py).

    python benchmarks/bridge_reading.py            # SmolLM2-135M, 60 held-out TTS transcripts

A bridge run's LM loss near `none` means the LM is not reading the speech yet; `bpe` is the floor a
bridge can reach without training the LM. Prints each loss and its ratio to `none`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from benchmarks.bridge_asr import ensure_corpus


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/bridge_smollm2.yaml")
    p.add_argument("--heldout-utts", type=int, default=60)
    p.add_argument("--data", default="runs/bench_bridge_data")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)

    import torch
    import torch.nn.functional as F
    torch.set_num_threads(a.threads)
    from megaspeech.config.load import load_config
    from megaspeech.config.schema import PretrainConfig
    from megaspeech.bridge.layer import BridgeOutput, splice
    from megaspeech.bridge.export import SINGLE
    from megaspeech.checkpoint.hf_import import init_from_hf
    from megaspeech.bridge.model import spliced_targets
    from megaspeech.parallel.parallelize import build_model
    from megaspeech.bridge.batches import CTCUnits, load_utterances, text_codec
    from megaspeech.bridge.evaluate import ensure_smollm2
    heldout = ensure_corpus(Path(a.data) / f"heldout{a.heldout_utts}", "heldout", a.heldout_utts)
    cfg = load_config(PretrainConfig, ROOT / a.config if not Path(a.config).is_absolute() else a.config,
                      [f"bridge.train={heldout}"])
    ensure_smollm2(cfg)
    lm = build_model(cfg, SINGLE)
    if cfg.model.init_from_hf:
        init_from_hf(lm, cfg, SINGLE)
    lm.eval()
    codec = text_codec(cfg.bridge, cfg.vocab)
    _, texts, _, _ = load_utterances(str(heldout), 30.0)
    prompt = [codec.bos] + list(codec.encode(cfg.bridge.asr_prompt))
    chars = CTCUnits("chars", codec, cfg.vocab.text_size)  # what bridge.ctc_embed hands the LM per unit
    slots = {"none": lambda t: [], "bpe": lambda t: list(codec.encode(" " + t)),
             "chars": lambda t: [chars.token_ids[u] for u in chars.encode(t) if chars.token_ids[u] >= 0]}
    losses = {}
    with torch.no_grad():
        for name, slot in slots.items():
            total = count = 0.0
            for t in texts:
                speech = slot(t)
                target = list(codec.encode(" " + t.strip()))[:cfg.bridge.max_text_tokens] + [codec.eos]
                ids = torch.tensor([prompt + target])
                mask = torch.tensor([[0.0] * len(prompt) + [1.0] * len(target)])
                emb = lm.embedding(torch.tensor([speech])).transpose(0, 1) if speech else \
                    torch.zeros(1, 0, cfg.model.hidden_size)
                out = BridgeOutput(emb, torch.tensor([len(speech)]), None)
                x, _ = splice(out, lm.embedding(ids).transpose(0, 1), torch.tensor([ids.shape[1]]))
                logits = lm(None, embeds=x)[:, 0].float()
                labels, m = spliced_targets(out.lengths, ids, torch.tensor([ids.shape[1]]), mask, x.shape[0])
                ce = F.cross_entropy(logits, labels[0], reduction="none") * m[0]
                total, count = total + float(ce.sum()), count + float(m.sum())
            losses[name] = total / count
            print(f"{name}.loss={losses[name]:.4f}", flush=True)
    for name in ("bpe", "chars"):
        print(f"{name}.loss_vs_none={losses[name] / losses['none']:.3f}")
    print(f"transcripts={len(texts)} target_tokens={int(count)} config={a.config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
