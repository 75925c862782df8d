"""Training the speech decoder (megaspeech.speech.speech_decoder) on the speech tokenizer's audio shards.

Each step trains both parts once on the next shuffled batch of utterances:
  code -> mel  a random crop of train.crop_codes codes per utterance (codes of the frozen tokenizer,
               computed once per utterance and cached in RUN_DIR/codes.npz) against the same span of
               the utterance's log-mel (megaspeech.speech.decoder_mel);
  vocoder      a random crop of train.vocoder_seconds of the true log-mel -> the same span of audio.
Crops are drawn from (run.seed, step), the flow's noise from a generator seeded the same way, so a
run stopped and resumed from RUN_DIR/checkpoint.pt (models, optimizers, step, data position;
atomic, weights_only) continues bit for bit. RUN_DIR/metrics.jsonl gets a line per logged step, the
console a progress line with the ETA; RUN_DIR/decoder/ is the decoder directory
(load_speech_decoder), refreshed at every checkpoint.
"""
from __future__ import annotations

import dataclasses
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from megaspeech.config.schema import OptimConfig
from megaspeech.config.speech_decoding import SpeechDecoderTrainingConfig
from megaspeech.fs import atomic_path
from megaspeech.speech.audio import POOLS
from megaspeech.speech.audio_batches import AudioBatches, audio_chunks
from megaspeech.speech.decoder_mel import HOP, frames_per_code, log_mel
from megaspeech.speech.decoder_model import CodeToMel
from megaspeech.speech.speech_decoder import save_speech_decoder
from megaspeech.speech.tokenizer import load_tokenizer, tokenize_audios, tokenizer_fingerprint
from megaspeech.speech.vocoder import Vocoder
from megaspeech.train.schedule import lr_lambda

MEL_STATS_ITEMS = 64  # utterances whose log-mel sets the normalisation (the first ones, in corpus order)


def _lr_factor(cfg, lr: float):
    optim = OptimConfig(lr=lr, min_lr=lr * cfg.min_lr_ratio, warmup_steps=cfg.warmup_steps, decay="cosine")
    return lr_lambda(optim, cfg.steps)


def _codebook_size(tok) -> int:
    return int(getattr(tok, "codebook_size", None) or tok.vq.codebook_size)


class SpeechDecoderTrainer:
    """One invocation: set up (tokenizer codes, models, optimizers), resume() or start, run() the steps.

    tokenizer: an already loaded speech tokenizer model (tests); None = load train.tokenizer."""

    def __init__(self, cfg: SpeechDecoderTrainingConfig, log=print, tokenizer=None):
        self.cfg, self.log, tc = cfg, log, cfg.train
        self.run_dir = Path(cfg.run.dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if tc.threads:
            torch.set_num_threads(tc.threads)
        (self.run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        if tokenizer is None:
            tokenizer = load_tokenizer(tc.tokenizer)[0]
            self.tok_info = {"path": str(tc.tokenizer), "fingerprint": tokenizer_fingerprint(tc.tokenizer)}
        else:
            self.tok_info = {"path": None, "fingerprint": None}
        self.frame_rate, self.K = POOLS[tokenizer.pool], _codebook_size(tokenizer)
        self.fpc = frames_per_code(self.frame_rate)
        self.data = AudioBatches(tc.data, tc.batch_size, cfg.run.seed)
        self.codes = self._codes(tokenizer)
        torch.manual_seed(cfg.run.seed)
        self.c2m = CodeToMel(cfg.model, self.K, self.fpc)
        self.voc = Vocoder(cfg.vocoder)
        self.opt_c = torch.optim.AdamW(self.c2m.parameters(), lr=tc.lr, weight_decay=0.0)
        self.opt_v = torch.optim.AdamW(self.voc.parameters(), lr=tc.vocoder_lr, weight_decay=0.0)
        self.factor_c, self.factor_v = _lr_factor(tc, tc.lr), _lr_factor(tc, tc.vocoder_lr)
        self.step = 0
        self.ckpt = self.run_dir / "checkpoint.pt"

    # data --------------------------------------------------------------------------------------
    def _codes(self, tokenizer) -> list[np.ndarray]:
        """Every training item's codes, from RUN_DIR/codes.npz when it was made by this tokenizer."""
        cache, fp = self.run_dir / "codes.npz", self.tok_info["fingerprint"]
        if fp is not None and cache.is_file():
            z = np.load(cache)
            if str(z["fingerprint"]) == fp and len(z["offsets"]) == len(self.data) + 1:
                return np.split(z["codes"], z["offsets"][1:-1])
        t0, codes = time.time(), []
        with torch.no_grad():
            for audios in audio_chunks(self.data):
                codes += [np.asarray(c, dtype=np.int64) for c in tokenize_audios(tokenizer, audios)]
        self.log(f"tokenized {len(codes)} training items in {time.time() - t0:.0f} s")
        if fp is not None:
            offsets = np.cumsum([0] + [len(c) for c in codes])
            with atomic_path(cache, ".npz") as tmp:
                np.savez(tmp, codes=np.concatenate(codes), offsets=offsets, fingerprint=np.array(fp))
        return codes

    def _mel_stats(self) -> None:
        """Mean and std of the log-mel over the first MEL_STATS_ITEMS items -> the model's buffers."""
        mels = [log_mel(a) for a in self.data._load(range(min(MEL_STATS_ITEMS, len(self.data))))[0]]
        allm = torch.cat([m.reshape(-1) for m in mels])
        self.c2m.mel_mean.fill_(float(allm.mean()))
        self.c2m.mel_std.fill_(float(allm.std()))

    def _aligned(self, audio: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """An item's audio padded or cut to its codes' length, and its log-mel [n_mels, len(codes) * fpc]."""
        nf = len(codes) * self.fpc
        audio = np.pad(audio, (0, max(0, nf * HOP - len(audio))))[:nf * HOP]
        return audio, log_mel(audio, nf)

    def _code_templates(self) -> None:
        """The code->mel model's code templates: each code's mean mel over every training item (streamed:
        one chunk of audio in memory at a time)."""
        t0 = time.time()
        audios = (a for chunk in audio_chunks(self.data) for a in chunk)
        seen = self.c2m.set_templates((torch.from_numpy(c), self._aligned(a, c)[1]) for a, c in zip(audios, self.codes))
        self.log(f"code templates: {seen} of {self.K} codes seen in {len(self.codes)} items ({time.time() - t0:.0f} s)")

    def _batch(self, idx: np.ndarray, rng: np.random.Generator):
        """(codes [B, L], their mel [B, n_mels, L * fpc], vocoder mel [B, n_mels, Fv], audio [B, Fv * HOP])."""
        tc, spc = self.cfg.train, self.fpc * HOP
        audios = self.data._load(idx)[0]
        codes = [self.codes[i] for i in idx]
        L = min(tc.crop_codes, *(len(c) for c in codes))
        n_frames = [len(c) * self.fpc for c in codes]
        Fv = min(int(round(tc.vocoder_seconds * 100)), *n_frames)
        cs, ms, vm, va = [], [], [], []
        for c, a, nf in zip(codes, audios, n_frames):
            a, mel = self._aligned(a, c)
            s = int(rng.integers(0, len(c) - L + 1))
            cs.append(torch.from_numpy(c[s:s + L]))
            ms.append(mel[:, s * self.fpc:(s + L) * self.fpc])
            f = int(rng.integers(0, nf - Fv + 1))
            vm.append(mel[:, f:f + Fv])
            va.append(torch.from_numpy(a[f * HOP:(f + Fv) * HOP]))
        assert spc * L == ms[0].shape[-1] * HOP
        return torch.stack(cs), torch.stack(ms), torch.stack(vm), torch.stack(va)

    # steps ---------------------------------------------------------------------------------------
    def train_step(self) -> dict:
        tc = self.cfg.train
        idx = self.data.next_indices()
        rng = np.random.default_rng([self.cfg.run.seed, self.step])
        codes, mel, vmel, vaudio = self._batch(idx, rng)
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        out = {}
        for opt, factor, lr in ((self.opt_c, self.factor_c, tc.lr), (self.opt_v, self.factor_v, tc.vocoder_lr)):
            for g in opt.param_groups:
                g["lr"] = lr * factor(self.step)
        loss, parts = self.c2m.loss(codes, mel, gen)
        self.opt_c.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.c2m.parameters(), tc.grad_clip)
        self.opt_c.step()
        out.update(parts)
        vloss, vparts = self.voc.loss(vmel, vaudio, tc.mel_weight, tc.stft_weight, tc.mag_weight, tc.phase_weight)
        self.opt_v.zero_grad(set_to_none=True)
        vloss.backward()
        torch.nn.utils.clip_grad_norm_(self.voc.parameters(), tc.grad_clip)
        self.opt_v.step()
        out.update(vparts)
        self.step += 1
        return out

    def state_dict(self) -> dict:
        return {"code_to_mel": self.c2m.state_dict(), "vocoder": self.voc.state_dict(),
                "optim_c": self.opt_c.state_dict(), "optim_v": self.opt_v.state_dict(),
                "data": self.data.state_dict(), "step": self.step}

    def resume(self) -> bool:
        """Continue from RUN_DIR/checkpoint.pt (run.resume); else a fresh start (mel statistics). True when resumed."""
        if self.cfg.run.resume and self.ckpt.is_file():
            s = torch.load(self.ckpt, weights_only=True, map_location="cpu")
            self.c2m.load_state_dict(s["code_to_mel"])
            self.voc.load_state_dict(s["vocoder"])
            self.opt_c.load_state_dict(s["optim_c"])
            self.opt_v.load_state_dict(s["optim_v"])
            self.data.load_state_dict(s["data"])
            self.step = s["step"]
            self.log(f"resumed from {self.ckpt} at step {self.step}")
            return True
        self._mel_stats()
        if self.cfg.model.code_templates:
            self._code_templates()
        return False

    def save(self) -> None:
        """RUN_DIR/checkpoint.pt (atomically) and the decoder directory RUN_DIR/decoder/."""
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        with atomic_path(self.ckpt) as tmp:
            tmp.write_bytes(buf.getvalue())
        tc = self.cfg.train
        save_speech_decoder(self.run_dir / "decoder", self.c2m, self.voc, self.frame_rate, self.tok_info, self.K,
                            trained_on={"steps": self.step, "batch_size": tc.batch_size, "data": self.data.sources,
                                        "epochs": self.step * tc.batch_size / len(self.data),
                                        "hours": sum(s["hours"] or 0.0 for s in self.data.sources)})

    def run(self) -> dict:
        """Steps up to train.steps (or train.max_seconds); returns the last logged metrics."""
        tc = self.cfg.train
        self.c2m.train()
        self.voc.train()
        t0, start, last, acc = time.time(), self.step, {}, {}
        with open(self.run_dir / "metrics.jsonl", "a") as mf:
            while self.step < tc.steps:
                for k, v in self.train_step().items():
                    acc.setdefault(k, []).append(v)
                elapsed = time.time() - t0
                if self.step % tc.log_every == 0 or self.step == tc.steps:
                    rate = (self.step - start) / max(elapsed, 1e-9)
                    last = {"step": self.step, **{k: float(np.mean(v)) for k, v in acc.items()},
                            "lr": self.opt_c.param_groups[0]["lr"], "elapsed_s": elapsed,
                            "eta_s": (tc.steps - self.step) / max(rate, 1e-9)}
                    mf.write(json.dumps(last) + "\n")
                    mf.flush()
                    self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items())
                             + f" ({100 * self.step / tc.steps:.0f}%, ETA {last['eta_s'] / 60:.1f} min)")
                    acc = {}
                out_of_time = tc.max_seconds and elapsed > tc.max_seconds
                if self.step % tc.checkpoint_every == 0 or self.step == tc.steps or out_of_time:
                    self.save()
                if out_of_time:
                    self.log(f"train.max_seconds={tc.max_seconds} reached at step {self.step}; checkpoint saved")
                    break
        return last


def train(cfg: SpeechDecoderTrainingConfig, log=print, tokenizer=None) -> dict:
    """Train (or resume) into cfg.run.dir; returns the last logged metrics. The decoder is RUN_DIR/decoder."""
    trainer = SpeechDecoderTrainer(cfg, log, tokenizer)
    trainer.resume()
    return trainer.run()
