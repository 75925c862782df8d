"""Train a LaSyn latent synthesizer (megaspeech/speech/lasyn.py) on (text, real encoder latent) pairs:
the utterances of an `audio` dataset (TTS speech of real text) run once through the frozen frame encoder
the bridge uses (bridge.encoder, same seed for the conv encoder), then AdamW on the synthesizer's loss."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from megaspeech.config.load import check
from megaspeech.speech.lasyn import LatentSynthesizer, SynthConfig, pad_units, save_synthesizer


@dataclass
class LaSynTrainConfig:
    data: str = ""  # `audio` dataset with transcripts (launch/make_speech_corpus.py)
    out: str = "runs/lasyn/synth.pt"
    encoder: Literal["whisper", "conv"] = "whisper"  # must be the bridge run's bridge.encoder
    encoder_dim: int = 64  # conv encoder (= bridge.encoder_dim)
    seed: int = 1234  # conv encoder: = the bridge run's run.seed (the same random encoder)
    steps: int = 300
    batch: int = 16
    lr: float = 1e-3
    max_seconds: float = 20.0
    threads: int = 2
    synth: SynthConfig = field(default_factory=SynthConfig)

    def __post_init__(self):
        check(bool(self.data), "data", "set data=<audio dataset dir>")
        check(self.steps >= 1 and self.batch >= 1, "steps", "steps and batch must be >= 1")


@torch.no_grad()
def encoder_pairs(encoder, audios: list[bytes], texts: list[str], keys: list[str], chunk: int = 8):
    """-> [(units, latents float32 [T, D])] through the frozen encoder, per utterance."""
    from megaspeech.model.speech_lm import ctc_units
    from megaspeech.speech.audio import HOP, decode_audio, log_mel
    out = []
    for s in range(0, len(audios), chunk):
        mels = []
        for a, k in zip(audios[s:s + chunk], keys[s:s + chunk]):
            x = decode_audio(a, k)
            f = int(np.ceil(x.shape[0] / HOP))
            mels.append(log_mel(x, 80, k, frames=f + f % 2))
        F_ = max(m.shape[1] for m in mels)
        feats = torch.zeros(len(mels), 80, F_)
        for i, m in enumerate(mels):
            feats[i, :, :m.shape[1]] = torch.from_numpy(m)
        h, lens = encoder(feats, torch.tensor([m.shape[1] for m in mels]))
        for i, t in enumerate(texts[s:s + chunk]):
            out.append((ctc_units(t), h[i, :int(lens[i])].float().clone()))
    return out


def train_lasyn(cfg: LaSynTrainConfig, log=print) -> dict:
    from megaspeech.speech.bridge_data import load_utterances
    from megaspeech.train.bridge_task import make_encoder
    torch.set_num_threads(cfg.threads)
    encoder = make_encoder(cfg.encoder, cfg.encoder_dim, cfg.seed).eval()
    audios, texts, keys, skipped = load_utterances(cfg.data, cfg.max_seconds)
    t0 = time.perf_counter()
    pairs = encoder_pairs(encoder, audios, texts, keys)
    log(f"lasyn: {len(pairs)} (text, latent) pairs from {cfg.data} ({skipped} skipped) in {time.perf_counter() - t0:.0f} s")
    synth_cfg = SynthConfig(**{**cfg.synth.__dict__, "latent_dim": pairs[0][1].shape[1]})
    torch.manual_seed(cfg.seed)
    model = LatentSynthesizer(synth_cfg)
    allf = torch.cat([p[1] for p in pairs])
    model.set_latent_stats(allf.mean(0), allf.std(0))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for step in range(1, cfg.steps + 1):
        idx = rng.choice(len(pairs), size=min(cfg.batch, len(pairs)), replace=False)
        units, ul = pad_units([pairs[i][0] for i in idx])
        T = max(pairs[i][1].shape[0] for i in idx)
        lat = torch.zeros(len(idx), T, synth_cfg.latent_dim)
        for j, i in enumerate(idx):
            lat[j, :pairs[i][1].shape[0]] = pairs[i][1]
        fl = torch.tensor([pairs[i][1].shape[0] for i in idx])
        loss = model.loss(units, ul, lat, fl, generator=gen)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
        if step % 50 == 0 or step == cfg.steps:
            log(f"lasyn {synth_cfg.kind} step {step}: loss {np.mean(losses[-50:]):.4f}")
    save_synthesizer(model, cfg.out, {"data": cfg.data, "encoder": cfg.encoder, "steps": cfg.steps})
    return {"out": cfg.out, "first_loss": losses[0], "final_loss": float(np.mean(losses[-10:])), "pairs": len(pairs)}
