"""Training the supervised speech tokenizer on audio shards with the ASR loss (+ VQ commitment),
and/or distillation: MSE between the post-VQ encoder states and the original (frozen, un-quantized,
un-pooled) Whisper encoder's states on the same audio (train.distill_weight, needs
tokenizer.unpool=repeat). Dense per-frame targets generalise where 1,600 transcripts let the
decoder memorise; with freeze=pre_vq_and_decoder only the layers above the VQ learn. Items without
a transcript (unlabelled recordings) train through distillation alone: no CE term for them.

One process, batched, resumable: RUN_DIR/checkpoint.pt holds model (with VQ EMA buffers),
optimizer, LR schedule, step and the data position, written atomically; a restarted run continues
bit-exactly. RUN_DIR/metrics.jsonl gets one line per logged step; RUN_DIR/tokenizer/ is the
exported tokenizer (megaspeech.speech.tokenizer.load_tokenizer) refreshed at every checkpoint.
The batches come from megaspeech.speech.audio_batches; the teacher, the feature caches and the
codebook init from megaspeech.speech.tokenizer_init.
"""
from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch

from megaspeech.config.load import check
from megaspeech.config.schema import OptimConfig
from megaspeech.fs import atomic_path
from megaspeech.speech.audio_batches import AudioBatches
from megaspeech.speech.augment import AugmentConfig
from megaspeech.speech.tokenizer import TokenizerConfig, build_tokenizer, features, save_tokenizer, text_targets
from megaspeech.speech.tokenizer_init import Teacher, init_bottleneck, pooled_cache, sampled_frames, teacher_cache
from megaspeech.train.schedule import lr_lambda


@dataclass
class SpeechTokenizerRunConfig:
    dir: str = "runs/speech_tokenizer"
    seed: int = 1234
    resume: bool = True  # continue from RUN_DIR/checkpoint.pt when present
    # a fresh run starts from this tokenizer training checkpoint's weights (codebook and EMA state
    # included; optimizer, step and data position start anew: Megatron's --finetune); null = Whisper
    init_from: str | None = None


@dataclass
class SpeechTokenizerTrainConfig:
    # `audio` shards (launch/make_speech_corpus.py, launch/ingest_audio.py); a list reads several
    data: str | list[str] = "runs/speech/train"
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # pre_vq_and_decoder: only the encoder layers above the VQ train (the decoder cannot memorise);
    # decoder: the whole encoder and the VQ train under the frozen decoder (features per step)
    freeze: Literal["none", "pre_vq", "pre_vq_and_decoder_embeddings", "pre_vq_and_decoder", "decoder"] = "none"
    asr_weight: float = 1.0  # weight of the decoder's cross-entropy (0 = decoder not run)
    distill_weight: float = 0.0  # weight of MSE(post-VQ encoder states, original Whisper encoder)
    # > 0: the layers above the VQ read a code sampled among each frame's 8 nearest (a code (1 + T) times as far
    # in squared distance as the nearest is e^-1 as likely; tokenizer_model.sample_codes), not the
    # nearest: they learn to read codes a little off, as an unheard voice's frames land; 0 = nearest
    code_temperature: float = 0.0
    codebook_ema_epochs: int = 0  # EMA (k-means-like) passes over the init vectors before training
    codebook_init_batches: int = 8  # batches of pooled frames sampled to initialise the codebook
    # > 0: pack consecutive utterances into items of at most this (<= 30 s). Measured: 2x the speech
    # per step, but from scratch (20 s packs, 4,096 x 32 codes with position) the codes collapsed
    # (perplexity 3,300 -> 95 in 60 steps, CE flat): start on single utterances
    pack_seconds: float = 0.0
    max_seconds: float = 0.0  # wall-clock budget; 0 = none. Stops (and checkpoints) when exceeded
    checkpoint_every: int = 100
    log_every: int = 10
    threads: int = 0  # torch threads; 0 = leave as is

    def __post_init__(self):
        check(self.steps > 0, "train.steps", "must be > 0")
        check(self.batch_size > 0, "train.batch_size", "must be > 0")
        check(self.lr > 0, "train.lr", "must be > 0")
        check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        check(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
        check(self.checkpoint_every > 0, "train.checkpoint_every", "must be > 0")
        check(self.asr_weight > 0 or self.distill_weight > 0, "train.asr_weight",
              "asr_weight or distill_weight must be > 0")
        check(self.code_temperature >= 0, "train.code_temperature", "must be >= 0 (0 = the nearest code)")
        check(0 <= self.pack_seconds <= 30, "train.pack_seconds", "must be in [0, 30] (Whisper's window)")


@dataclass
class SpeechTokenizerTrainingConfig:
    run: SpeechTokenizerRunConfig = field(default_factory=SpeechTokenizerRunConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: SpeechTokenizerTrainConfig = field(default_factory=SpeechTokenizerTrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def _voices(sources: list[dict]) -> dict[str, int]:
    """Utterances per TTS voice (corpus manifests) or per real-audio set (ingested manifests)."""
    out: dict[str, int] = {}
    for s in sources:
        for v, n in (s["meta"].get("voices") or {f"real:{s['path']}": s["samples"]}).items():
            out[v] = out.get(v, 0) + n
    return out


def lr_schedule(cfg: SpeechTokenizerTrainConfig) -> Callable[[int], float]:
    """step -> learning rate: linear warmup to train.lr over train.warmup_steps, then cosine decay to
    lr * min_lr_ratio at train.steps (the pre-training schedule, megaspeech.train.schedule)."""
    optim = OptimConfig(lr=cfg.lr, min_lr=cfg.lr * cfg.min_lr_ratio, warmup_steps=cfg.warmup_steps,
                        decay="cosine", weight_decay=cfg.weight_decay)
    factor = lr_lambda(optim, cfg.steps)
    return lambda step: cfg.lr * factor(step)


def _freeze(model, how: str) -> None:
    if how in ("pre_vq", "pre_vq_and_decoder_embeddings", "pre_vq_and_decoder"):
        for m in (model.conv1, model.conv2, model.embed_positions, model.pre_layers):
            m.requires_grad_(False)
    if how == "pre_vq_and_decoder_embeddings":  # the 51k x D tied embedding is most of tiny's weights
        model.decoder.embed_tokens.requires_grad_(False)
    if how in ("pre_vq_and_decoder", "decoder"):
        model.decoder.requires_grad_(False)  # proj_out is tied to its embedding


def _pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[T_i, D] tensors -> (zero-padded [B, T, D], keep bool [B, T])."""
    lens = torch.tensor([s.shape[0] for s in seqs])
    keep = torch.arange(int(lens.max()))[None, :] < lens[:, None]
    out = torch.zeros(*keep.shape, seqs[0].shape[1])
    out[keep] = torch.cat(seqs)
    return out, keep


def _new_window() -> dict:
    """Sums over the steps since the last log line; n: steps per loss term (no CE in an untranscribed batch)."""
    return {"n": {}, "audio_s": 0.0, "codes": []}


class SpeechTokenizerTrainer:
    """One invocation of train(): set up (model, data, optimizer, teacher), then resume() or start,
    init_inputs() (feature caches, codebook init), then run() the steps, logging and saving."""

    def __init__(self, cfg: SpeechTokenizerTrainingConfig, log=print):
        self.cfg, self.log = cfg, log
        self.run_dir = Path(cfg.run.dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        (self.run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        torch.manual_seed(cfg.run.seed)
        self.model, self.whisper = build_tokenizer(cfg.tokenizer)
        _freeze(self.model, cfg.train.freeze)
        self.data = AudioBatches(cfg.train.data, cfg.train.batch_size, cfg.run.seed, cfg.train.pack_seconds,
                                 augment=cfg.augment)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.lr_at = lr_schedule(cfg.train)
        self.distill = cfg.train.distill_weight > 0
        for src in self.data.sources:
            check(not src["untranscribed"] or self.distill, "train.distill_weight",
                  f"{src['path']}: {src['untranscribed']} items have no transcript; untranscribed audio trains only "
                  f"through distillation: set train.distill_weight > 0, or label it (launch/ingest_audio.py "
                  f"ingest.pseudo_label=true)")
        check(not self.distill or cfg.tokenizer.unpool == "repeat", "train.distill_weight",
              "distillation compares 50 Hz states: set tokenizer.unpool=repeat")
        self.teacher = Teacher(self.whisper) if self.distill else None
        # clean audio: the teacher's states once per item; augmented audio is new every epoch, so the
        # teacher then runs per step on the same augmented audio as the student
        self.tcache = teacher_cache(self.teacher, self.data) if self.distill and not cfg.augment.enabled else None
        self.step = 0
        self.ckpt = self.run_dir / "checkpoint.pt"

    def resume(self) -> bool:
        """Continue from RUN_DIR/checkpoint.pt (run.resume), else take run.init_from's weights when
        given. True when resumed."""
        if self.cfg.run.resume and self.ckpt.is_file():
            s = torch.load(self.ckpt, weights_only=True, map_location="cpu")
            self.model.load_state_dict(s["model"])
            self.opt.load_state_dict(s["optim"])
            self.data.load_state_dict(s["data"])
            self.step = s["step"]
            self.log(f"resumed from {self.ckpt} at step {self.step}")
            return True
        if self.cfg.run.init_from:
            src = Path(self.cfg.run.init_from)
            if not src.is_file():
                raise FileNotFoundError(f"run.init_from={src}: no such checkpoint; give a tokenizer run's "
                                        f"RUN_DIR/checkpoint.pt")
            self.model.load_state_dict(torch.load(src, weights_only=True, map_location="cpu")["model"])
            self.log(f"initialised from {src} (fresh optimizer, step 0)")
        return False

    def init_inputs(self, resumed: bool) -> None:
        """The pooled pre-VQ cache when it is the training input (or, with distillation, the codebook's
        init data), and the data-dependent codebook init of a run that starts from Whisper."""
        cfg = self.cfg
        init_codebook = not resumed and not cfg.run.init_from
        self.pre_vq_frozen = cfg.train.freeze.startswith("pre_vq")
        # pre-VQ frozen on clean audio: their 12.5 Hz output once per item, from the weights as loaded (the
        # CPU-saving path: gradients reach only the layers above the bottleneck); augmented audio is new
        # every epoch, so they then run per step without gradients. With distillation the whole data set
        # also initialises the codebook
        self.cached = self.pre_vq_frozen and not cfg.augment.enabled
        self.cache = (pooled_cache(self.model, self.data) if self.cached or (init_codebook and self.distill)
                      else None)
        if self.tcache is not None:
            self.log(f"cached teacher states of {len(self.tcache)} training items")
        if self.cache is not None:
            self.log(f"cached pre-VQ features of {len(self.cache)} training items")
        if init_codebook:  # data-dependent codebook init from real pooled frames (no EMA from random points)
            self.model.eval()
            vecs = list(self.cache) if self.cache is not None else []
            pos = [torch.arange(len(v)) for v in vecs]
            if not vecs:
                vecs, pos = sampled_frames(self.model, self.data, cfg.train.codebook_init_batches)
            init_bottleneck(self.model, torch.cat(vecs), torch.cat(pos), cfg.run.seed, cfg.train.codebook_ema_epochs)

    def save(self) -> None:
        """RUN_DIR/checkpoint.pt (atomically) and the exported tokenizer in RUN_DIR/tokenizer/."""
        with atomic_path(self.ckpt) as tmp:
            torch.save({"model": self.model.state_dict(), "optim": self.opt.state_dict(),
                        "data": self.data.state_dict(), "step": self.step}, tmp)
        tc, data = self.cfg.train, self.data
        seen = self.step * tc.batch_size
        save_tokenizer(self.run_dir / "tokenizer", self.model, self.cfg.tokenizer, self.whisper, trained_on={
            "steps": self.step, "batch_size": tc.batch_size, "items_seen": seen, "epochs": seen / len(data),
            "data": data.sources, "hours": sum(s["hours"] or 0.0 for s in data.sources),
            "voices": _voices(data.sources), "augment": dataclasses.asdict(self.cfg.augment),
            "freeze": tc.freeze, "pack_seconds": tc.pack_seconds})

    def _load_mels(self, idx, epoch):
        """Features of items idx, augmented (when on) as in this epoch; + the teacher's states when per step."""
        audios = self.data._load(idx, epoch)[0]
        feats = features(audios, self.model.conv1.in_channels, self.model.pool)
        return feats, (self.teacher(audios) if self.distill and self.tcache is None else None)

    def _inputs(self, idx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(pooled [B, T, D], keep [B, T], distillation target or None) of the batch of items idx."""
        step_target = None  # the teacher's states when it runs per step (in _load_mels)
        if self.cached:
            pooled, keep = _pad([self.cache[i] for i in idx])
        else:
            # decoding, augmentation and log-mels of a batch are a pure function of (indices,
            # epoch): the next batch's are made in a thread while this step trains
            key = (self.data.epoch, tuple(idx.tolist()))
            mels, step_target = (self.ahead.result() if self.ahead is not None and self.ahead_key == key
                                 else self._load_mels(idx, self.data.epoch))
            nidx, nep = self.data.upcoming()
            self.ahead_key, self.ahead = (nep, tuple(nidx.tolist())), self.pool.submit(self._load_mels, nidx, nep)
            with torch.set_grad_enabled(not self.pre_vq_frozen):
                pooled, keep = self.model.pooled(*mels)
        target = torch.stack([self.tcache[i] for i in idx]) if self.tcache is not None else step_target
        return pooled, keep, target

    def train_step(self) -> None:
        """One optimizer step on the next batch; its losses, audio and codes add to the log window."""
        tc = self.cfg.train
        idx = self.data.next_indices()
        texts = self.data.texts(idx)
        text_in, text_out = text_targets(self.whisper, texts) if tc.asr_weight > 0 else (None, None)
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step)
        pooled, keep, target = self._inputs(idx)
        gen = torch.Generator().manual_seed(self.cfg.run.seed * 1_000_003 + self.step)  # per step: resumes exactly
        loss, logs, codes, keep = self.model.forward_pooled(pooled, keep, text_in, text_out, target,
                                                            tc.asr_weight, tc.distill_weight,
                                                            tc.code_temperature, gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.gnorm = torch.nn.utils.clip_grad_norm_(self.params, tc.grad_clip)
        self.opt.step()
        self.step += 1
        acc = self.acc
        for k, v in logs.items():
            acc[k] = acc.get(k, 0.0) + v
            acc["n"][k] = acc["n"].get(k, 0) + 1
        acc["audio_s"] += int(keep.sum()) / self.cfg.tokenizer.frame_rate
        acc["codes"].append(codes[keep])

    def log_window(self, mf) -> None:
        """One metrics.jsonl record (and log line) averaging the steps since the last one."""
        now, acc = time.time(), self.acc
        self.last = {"step": self.step, **{k: acc[k] / n for k, n in acc["n"].items()},
                     "perplexity": float(self.model.vq.perplexity(torch.cat(acc["codes"]))),
                     "lr": self.lr_at(self.step - 1), "grad_norm": float(self.gnorm),
                     "audio_s_per_s": acc["audio_s"] / (now - self.t_win), "elapsed_s": now - self.t_start}
        mf.write(json.dumps(self.last) + "\n")
        mf.flush()
        self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.last.items()))
        self.acc = _new_window()
        self.t_win = now

    def run(self) -> dict:
        """Steps up to train.steps (or train.max_seconds); returns the last logged metrics."""
        tc = self.cfg.train
        self.model.train()
        self.pool, self.ahead, self.ahead_key = ThreadPoolExecutor(1), None, None
        self.t_start = self.t_win = time.time()
        self.last, self.acc = {}, _new_window()
        with open(self.run_dir / "metrics.jsonl", "a") as mf:
            while self.step < tc.steps:
                self.train_step()
                if self.step % tc.log_every == 0 or self.step == tc.steps:
                    self.log_window(mf)
                out_of_time = tc.max_seconds and time.time() - self.t_start > tc.max_seconds
                if self.step % tc.checkpoint_every == 0 or self.step == tc.steps or out_of_time:
                    self.save()
                if out_of_time:
                    self.log(f"train.max_seconds={tc.max_seconds} reached at step {self.step}; checkpoint saved")
                    break
        self.pool.shutdown(wait=False, cancel_futures=True)
        return self.last


def train(cfg: SpeechTokenizerTrainingConfig, log=print) -> dict:
    """Train (or resume) into cfg.run.dir. Returns the last logged metrics."""
    trainer = SpeechTokenizerTrainer(cfg, log)
    trainer.init_inputs(resumed=trainer.resume())
    return trainer.run()
