"""Train a LaSyn latent synthesizer (megaspeech/bridge/lasyn.py) on (text, real encoder latent) pairs:
the utterances of an `audio` dataset (TTS speech of real text) run once through the frozen frame encoder
the bridge uses (bridge.encoder, same seed for the conv encoder), aligned to their transcripts (`align`:
ctc, a CTC probe's forced alignment, megaspeech/bridge/align.py; uniform, frames split evenly), then
AdamW on the synthesizer's loss."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch

from megaspeech.config.load import check
from megaspeech.bridge.lasyn import LatentSynthesizer, LaSynConfig, pad_units, save_synthesizer, uniform_durations


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
    align: Literal["ctc", "uniform"] = "ctc"  # duration targets: CTC forced alignment, or an even split
    align_steps: int = 300  # training steps of the CTC probe that aligns
    synth: LaSynConfig = field(default_factory=LaSynConfig)

    def __post_init__(self):
        check(bool(self.data), "data", "set data=<audio dataset dir>")
        check(self.align in ("ctc", "uniform"), "align", f"{self.align!r}: use ctc or uniform")
        check(self.steps >= 1 and self.batch >= 1, "steps", "steps and batch must be >= 1")


@torch.no_grad()
def encoder_pairs(encoder, audios: list[bytes], texts: list[str], keys: list[str], chunk: int = 8):
    """-> [(units, latents float32 [T, D])] through the frozen encoder, per utterance."""
    from megaspeech.bridge.model import ctc_units
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


def align_durations(pairs, cfg: LaSynTrainConfig, log=print) -> list[list[int]] | None:
    """Frames per unit of every pair (cfg.align=ctc), or None (uniform). Pairs the probe cannot align
    (fewer frames than their transcript needs) keep an even split."""
    if cfg.align == "uniform":
        return None
    from megaspeech.bridge.model import CTC_CHARS
    from megaspeech.bridge.align import align_pairs, train_ctc_probe
    t0 = time.perf_counter()
    head = train_ctc_probe(pairs, len(CTC_CHARS) + 1, steps=cfg.align_steps, seed=cfg.seed)
    durs, failed = align_pairs(head, pairs)
    for i, d in enumerate(durs):
        if d is None:
            u, T = len(pairs[i][0]), pairs[i][1].shape[0]
            durs[i] = uniform_durations(torch.tensor([u]), torch.tensor([T]), u)[0].tolist()
    log(f"lasyn: CTC alignment of {len(pairs)} pairs ({failed} too short, split evenly) in "
        f"{time.perf_counter() - t0:.0f} s")
    return durs


def trained_summary(cfg: LaSynTrainConfig) -> dict | None:
    """The summary train_lasyn returned for `cfg`, read from cfg.out's metadata, when cfg.out holds a
    synthesizer trained with exactly this config; else None."""
    from pathlib import Path
    path = Path(cfg.out).expanduser()
    if not path.is_file():
        return None
    meta = torch.load(path, map_location="cpu", weights_only=True).get("meta", {})
    same = meta.get("train") == json.dumps(asdict(cfg), sort_keys=True)
    return {k: meta[k] for k in ("out", "first_loss", "final_loss", "pairs")} if same else None


def train_lasyn(cfg: LaSynTrainConfig, log=print) -> dict:
    from megaspeech.bridge.batches import load_utterances
    from megaspeech.bridge.task import make_encoder
    torch.set_num_threads(cfg.threads)
    encoder = make_encoder(cfg.encoder, cfg.encoder_dim, cfg.seed).eval()
    audios, texts, keys, skipped = load_utterances(cfg.data, cfg.max_seconds)
    t0 = time.perf_counter()
    pairs = encoder_pairs(encoder, audios, texts, keys)
    log(f"lasyn: {len(pairs)} (text, latent) pairs from {cfg.data} ({skipped} skipped) in {time.perf_counter() - t0:.0f} s")
    durs = align_durations(pairs, cfg, log)
    synth_cfg = LaSynConfig(**{**cfg.synth.__dict__, "latent_dim": pairs[0][1].shape[1]})
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
        dur = None if durs is None else pad_units([durs[i] for i in idx])[0]
        loss = model.loss(units, ul, lat, fl, generator=gen, durations=dur)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
        if step % 50 == 0 or step == cfg.steps:
            log(f"lasyn {synth_cfg.kind} step {step}: loss {np.mean(losses[-50:]):.4f}")
    summary = {"out": cfg.out, "first_loss": losses[0], "final_loss": float(np.mean(losses[-10:])), "pairs": len(pairs)}
    save_synthesizer(model, cfg.out, {"train": json.dumps(asdict(cfg), sort_keys=True), **summary})
    return summary
