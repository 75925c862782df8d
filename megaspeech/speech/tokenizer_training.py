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
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from megaspeech.config.load import check
from megaspeech.data.shards import open_dataset
from megaspeech.fs import atomic_path
from megaspeech.speech.audio import SAMPLE_RATE, decode_audio, log_mel
from megaspeech.speech.audio_shards import audio_bytes
from megaspeech.speech.augment import AugmentConfig, augment
from megaspeech.speech.tokenizer import TokenizerConfig, build_tokenizer, features, save_tokenizer, text_targets


@dataclass
class RunConfig:
    dir: str = "runs/speech_tokenizer"
    seed: int = 1234
    resume: bool = True  # continue from RUN_DIR/checkpoint.pt when present
    # a fresh run starts from this tokenizer training checkpoint's weights (codebook and EMA state
    # included; optimizer, step and data position start anew: Megatron's --finetune); null = Whisper
    init_from: str | None = None


@dataclass
class TrainConfig:
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
        check(self.checkpoint_every > 0, "train.checkpoint_every", "must be > 0")
        check(self.asr_weight > 0 or self.distill_weight > 0, "train.asr_weight",
              "asr_weight or distill_weight must be > 0")
        check(self.code_temperature >= 0, "train.code_temperature", "must be >= 0 (0 = the nearest code)")
        check(0 <= self.pack_seconds <= 30, "train.pack_seconds", "must be in [0, 30] (Whisper's window)")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


class AudioBatches:
    """Shuffled batches of (audio, transcript) from `audio` shards, resumable by (epoch, cursor).

    The encoded (FLAC) bytes are held in memory (a CPU-sized corpus); decoding happens per batch.
    pack_seconds > 0: utterances are packed once (seeded) into groups of consecutive shuffled
    utterances of at most pack_seconds (with `gap` s of silence between them, transcripts joined by
    a space), as Whisper trains on long segments. A training item is then one group: the layers
    above the VQ and the decoder cost the same per item (Whisper's 30 s window) however much
    speech it holds, so packing multiplies the speech seen per step.
    """

    def __init__(self, path: str | list[str], batch_size: int, seed: int, pack_seconds: float = 0.0,
                 gap: float = 0.3, augment: AugmentConfig | None = None):
        items, durations = [], []
        self.sources = []  # per dataset: path, samples, hours, manifest meta (what the tokenizer trained on)
        for p in [path] if isinstance(path, str) else list(path):
            ds, secs, n0 = open_dataset(p, kind="audio"), 0.0, len(items)
            for key, s in ds:
                # an item without a transcript (a user's unlabelled recordings) trains through distillation only
                items.append((key, audio_bytes(s, f"{p} key {key!r}"), s.get("transcript")))
                if pack_seconds > 0 or "duration" in s:  # only packing decodes audio of unknown length
                    durations.append(float(s["duration"]) if "duration" in s else
                                     len(decode_audio(items[-1][1], key)) / SAMPLE_RATE)
                    secs += durations[-1]
            untranscribed = sum(it[2] is None for it in items[n0:])
            if untranscribed and pack_seconds > 0:
                raise ValueError(f"{p}: {untranscribed} items have no transcript, and packing joins "
                                 f"transcripts: set train.pack_seconds=0 for untranscribed audio")
            self.sources.append({"path": str(p), "samples": len(items) - n0, "untranscribed": untranscribed,
                                 "hours": secs / 3600 if len(durations) == len(items) else None,
                                 "meta": ds.manifest.get("meta", {})})
        self.items, self.batch_size, self.seed = items, batch_size, seed
        self.augment = augment if augment is not None and augment.enabled else None
        self.pack_seconds, self.gap = pack_seconds, gap
        self.groups = [[i] for i in range(len(items))]
        if pack_seconds > 0:
            self.groups, cur, t = [], [], 0.0
            for i in np.random.default_rng([seed, 1 << 20]).permutation(len(items)).tolist():
                d = durations[i]
                if cur and t + gap + d > pack_seconds:
                    self.groups.append(cur)
                    cur, t = [], 0.0
                t += d + (gap if cur else 0.0)
                cur.append(i)
            self.groups.append(cur)
        if len(self.groups) < batch_size:
            raise ValueError(f"{path}: {len(self.groups)} training items (utterances, or packs of "
                             f"train.pack_seconds) < train.batch_size={batch_size}")
        self.epoch, self.cursor = 0, 0

    def __len__(self) -> int:
        return len(self.groups)

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.groups))

    def peek(self, n_batches: int) -> list[tuple[list[np.ndarray], list[str]]]:
        """The first n batches of epoch 0 (at most one epoch's) without moving the position (codebook init)."""
        order = self._order(0)
        n_batches = max(1, min(n_batches, len(self.groups) // self.batch_size))
        return [self._load(order[b * self.batch_size:(b + 1) * self.batch_size]) for b in range(n_batches)]

    def texts(self, idx) -> list[str | None]:
        """Transcript per training item (None: untranscribed; packs are all transcribed)."""
        return [None if self.items[self.groups[g][0]][2] is None else " ".join(self.items[i][2] for i in self.groups[g])
                for g in idx]

    def _item_audio(self, i: int, epoch: int | None) -> np.ndarray:
        a = decode_audio(self.items[i][1], self.items[i][0])
        if self.augment is None or epoch is None:
            return a
        # seeded by (run seed, epoch, utterance): the same audio whatever the batch or restart
        return augment(a, np.random.default_rng([self.seed, epoch, i, 0xA06]), self.augment)

    def _load(self, idx, epoch: int | None = None) -> tuple[list[np.ndarray], list[str]]:
        """Audio and transcripts of training items `idx`; augmented (when on) as in `epoch`."""
        silence = np.zeros(int(self.gap * SAMPLE_RATE), np.float32)
        audios = []
        for g in idx:
            parts = [self._item_audio(i, epoch) for i in self.groups[g]]
            audios.append(np.concatenate([x for p in parts for x in (silence, p)][1:]))
        return audios, self.texts(idx)

    def next_indices(self) -> np.ndarray:
        if self.cursor + self.batch_size > len(self.groups):  # drop the ragged tail, new epoch
            self.epoch, self.cursor = self.epoch + 1, 0
        idx = self._order(self.epoch)[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return idx

    def upcoming(self) -> tuple[np.ndarray, int]:
        """(indices, epoch) the next next_indices() call returns, without moving the position."""
        epoch, cursor = self.epoch, self.cursor
        if cursor + self.batch_size > len(self.groups):
            epoch, cursor = epoch + 1, 0
        return self._order(epoch)[cursor:cursor + self.batch_size], epoch

    def next(self) -> tuple[list[np.ndarray], list[str]]:
        idx = self.next_indices()
        return self._load(idx, self.epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "n": len(self.groups), "seed": self.seed}

    def load_state_dict(self, s: dict) -> None:
        if s["n"] != len(self.groups) or s["seed"] != self.seed:
            raise ValueError(f"checkpoint was written for {s['n']} training items / seed {s['seed']}, data has "
                             f"{len(self.groups)} / {self.seed}; resume with the same train.data, "
                             f"train.pack_seconds and run.seed")
        self.epoch, self.cursor = s["epoch"], s["cursor"]


def _voices(sources: list[dict]) -> dict[str, int]:
    """Utterances per TTS voice (corpus manifests) or per real-audio set (ingested manifests)."""
    out: dict[str, int] = {}
    for s in sources:
        for v, n in (s["meta"].get("voices") or {f"real:{s['path']}": s["samples"]}).items():
            out[v] = out.get(v, 0) + n
    return out


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def _freeze(model, how: str) -> None:
    if how in ("pre_vq", "pre_vq_and_decoder_embeddings", "pre_vq_and_decoder"):
        for m in (model.conv1, model.conv2, model.embed_positions, model.pre_layers):
            m.requires_grad_(False)
    if how == "pre_vq_and_decoder_embeddings":  # the 51k x D tied embedding is most of tiny's weights
        model.decoder.embed_tokens.requires_grad_(False)
    if how in ("pre_vq_and_decoder", "decoder"):
        model.decoder.requires_grad_(False)  # proj_out is tied to its embedding


def _audio_chunks(data: AudioBatches, chunk: int = 16):
    """Every training item's audio, in order, `chunk` items at a time."""
    for s in range(0, len(data), chunk):
        yield data._load(range(s, min(s + chunk, len(data))))[0]


@torch.no_grad()
def _pooled_cache(model, data: AudioBatches) -> list[torch.Tensor]:
    """Per training item: pooled pre-VQ features [T_i, D] (the training input when the layers below
    the VQ are frozen, and the codebook's init data)."""
    model.eval()
    out = []
    for audios in _audio_chunks(data):
        pooled, keep = model.pooled(*features(audios, model.conv1.in_channels, model.pool))
        out.extend(p[k].clone() for p, k in zip(pooled, keep))
    return out


class Teacher:
    """The distillation target: the original Whisper encoder (un-pooled, un-quantized, as the base ASR
    runs it) on each utterance's 30 s window, frozen. A copy taken before any weight is loaded or
    trained, since the tokenizer reuses (and trains) Whisper's own encoder modules."""

    def __init__(self, whisper):
        self.encoder = copy.deepcopy(whisper.model.model.encoder).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, audios: list[np.ndarray]) -> torch.Tensor:
        """16 kHz utterances -> float32 [B, 1500, D]."""
        n_mels = self.encoder.config.num_mel_bins
        mel30 = torch.from_numpy(np.stack([log_mel(a, n_mels) for a in audios]))
        return self.encoder(mel30).last_hidden_state


def _teacher_cache(teacher: Teacher, data: AudioBatches) -> list[torch.Tensor]:
    """Per training item (clean audio): the teacher's states, float16 [1500, D]."""
    return [t.half() for audios in _audio_chunks(data) for t in teacher(audios)]


@torch.no_grad()
def init_bottleneck(model, vecs: torch.Tensor, pos: torch.Tensor, seed: int, ema_epochs: int) -> None:
    """Data-dependent init of the bottleneck from pooled pre-VQ frames vecs [N, D] at token positions
    pos [N]: the projection (PCA, position offsets), the codebook from distinct frames, then
    `ema_epochs` EMA passes (online k-means) over them. Training starts from it; the pooling benchmark
    measures what it alone costs."""
    model.eval()
    model.init_projection(vecs, pos)
    vecs = model.code_input(vecs, pos)
    gen = torch.Generator().manual_seed(seed)
    model.init_codebook(vecs, gen)
    model.vq.train()
    for _ in range(ema_epochs):
        for chunk in vecs[torch.randperm(len(vecs), generator=gen)].split(4096):
            model.vq(chunk)
    model.vq.eval()


def _pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[T_i, D] tensors -> (zero-padded [B, T, D], keep bool [B, T])."""
    lens = torch.tensor([s.shape[0] for s in seqs])
    keep = torch.arange(int(lens.max()))[None, :] < lens[:, None]
    out = torch.zeros(*keep.shape, seqs[0].shape[1])
    out[keep] = torch.cat(seqs)
    return out, keep


def train(cfg: Config, log=print) -> dict:
    """Train (or resume) into cfg.run.dir. Returns the last logged metrics."""
    run = Path(cfg.run.dir)
    run.mkdir(parents=True, exist_ok=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    torch.manual_seed(cfg.run.seed)
    model, whisper = build_tokenizer(cfg.tokenizer)
    _freeze(model, cfg.train.freeze)
    data = AudioBatches(cfg.train.data, cfg.train.batch_size, cfg.run.seed, cfg.train.pack_seconds,
                        augment=cfg.augment)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    distill = cfg.train.distill_weight > 0
    for src in data.sources:
        check(not src["untranscribed"] or distill, "train.distill_weight",
              f"{src['path']}: {src['untranscribed']} items have no transcript; untranscribed audio trains only "
              f"through distillation: set train.distill_weight > 0, or label it (launch/ingest_audio.py "
              f"ingest.pseudo_label=true)")
    check(not distill or cfg.tokenizer.unpool == "repeat", "train.distill_weight",
          "distillation compares 50 Hz states: set tokenizer.unpool=repeat")
    teacher = Teacher(whisper) if distill else None
    # clean audio: the teacher's states once per item; augmented audio is new every epoch, so the
    # teacher then runs per step on the same augmented audio as the student
    tcache = _teacher_cache(teacher, data) if distill and not cfg.augment.enabled else None
    step = 0
    ckpt = run / "checkpoint.pt"
    resume = cfg.run.resume and ckpt.is_file()
    if resume:
        s = torch.load(ckpt, weights_only=True, map_location="cpu")
        model.load_state_dict(s["model"])
        opt.load_state_dict(s["optim"])
        data.load_state_dict(s["data"])
        step = s["step"]
        log(f"resumed from {ckpt} at step {step}")
    elif cfg.run.init_from:
        src = Path(cfg.run.init_from)
        if not src.is_file():
            raise FileNotFoundError(f"run.init_from={src}: no such checkpoint; give a tokenizer run's "
                                    f"RUN_DIR/checkpoint.pt")
        model.load_state_dict(torch.load(src, weights_only=True, map_location="cpu")["model"])
        log(f"initialised from {src} (fresh optimizer, step 0)")
    init_codebook = not resume and not cfg.run.init_from
    pre_vq_frozen = cfg.train.freeze.startswith("pre_vq")
    # pre-VQ frozen on clean audio: their 12.5 Hz output once per item, from the weights as loaded (the
    # CPU-saving path: gradients reach only the layers above the bottleneck); augmented audio is new
    # every epoch, so they then run per step without gradients. With distillation the whole data set
    # also initialises the codebook
    cached = pre_vq_frozen and not cfg.augment.enabled
    cache = _pooled_cache(model, data) if cached or (init_codebook and distill) else None
    if tcache is not None:
        log(f"cached teacher states of {len(tcache)} training items")
    if cache is not None:
        log(f"cached pre-VQ features of {len(cache)} training items")
    if init_codebook:  # data-dependent codebook init from real pooled frames (no EMA from random points)
        model.eval()
        vecs = list(cache) if cache is not None else []
        pos = [torch.arange(len(v)) for v in vecs]
        if not vecs:
            with torch.no_grad():
                for audios, _ in data.peek(cfg.train.codebook_init_batches):
                    pooled, keep = model.pooled(*features(audios, model.conv1.in_channels, model.pool))
                    vecs.append(pooled[keep])
                    pos.append(model.positions(keep))
        init_bottleneck(model, torch.cat(vecs), torch.cat(pos), cfg.run.seed, cfg.train.codebook_ema_epochs)

    def save():
        with atomic_path(ckpt) as tmp:
            torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "data": data.state_dict(),
                        "step": step}, tmp)
        seen = step * cfg.train.batch_size
        save_tokenizer(run / "tokenizer", model, cfg.tokenizer, whisper, trained_on={
            "steps": step, "batch_size": cfg.train.batch_size, "items_seen": seen, "epochs": seen / len(data),
            "data": data.sources, "hours": sum(s["hours"] or 0.0 for s in data.sources),
            "voices": _voices(data.sources), "augment": dataclasses.asdict(cfg.augment),
            "freeze": cfg.train.freeze, "pack_seconds": cfg.train.pack_seconds})

    model.train()
    pool, ahead, ahead_key = ThreadPoolExecutor(1), None, None

    def load_mels(idx, epoch):  # augmented (when on) as in this epoch; + the teacher's states when per step
        audios = data._load(idx, epoch)[0]
        feats = features(audios, model.conv1.in_channels, model.pool)
        return feats, (teacher(audios) if distill and tcache is None else None)
    t_start = t_win = time.time()
    last = {}
    acc = {"n": {}, "audio_s": 0.0, "codes": []}  # n: steps per loss term (no CE in an untranscribed batch)
    with open(run / "metrics.jsonl", "a") as mf:
        while step < cfg.train.steps:
            idx = data.next_indices()
            texts = data.texts(idx)
            text_in, text_out = text_targets(whisper, texts) if cfg.train.asr_weight > 0 else (None, None)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg.train)
            step_target = None  # the teacher's states when it runs per step (in load_mels)
            if cached:
                pooled, keep = _pad([cache[i] for i in idx])
            else:
                # decoding, augmentation and log-mels of a batch are a pure function of (indices,
                # epoch): the next batch's are made in a thread while this step trains
                key = (data.epoch, tuple(idx.tolist()))
                mels, step_target = (ahead.result() if ahead is not None and ahead_key == key
                                     else load_mels(idx, data.epoch))
                nidx, nep = data.upcoming()
                ahead_key, ahead = (nep, tuple(nidx.tolist())), pool.submit(load_mels, nidx, nep)
                with torch.set_grad_enabled(not pre_vq_frozen):
                    pooled, keep = model.pooled(*mels)
            target = torch.stack([tcache[i] for i in idx]) if tcache is not None else step_target
            gen = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + step)  # per step: resumes exactly
            loss, logs, codes, keep = model.forward_pooled(pooled, keep, text_in, text_out, target,
                                                           cfg.train.asr_weight, cfg.train.distill_weight,
                                                           cfg.train.code_temperature, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
            opt.step()
            step += 1
            for k, v in logs.items():
                acc[k] = acc.get(k, 0.0) + v
                acc["n"][k] = acc["n"].get(k, 0) + 1
            acc["audio_s"] += int(keep.sum()) / cfg.tokenizer.frame_rate
            acc["codes"].append(codes[keep])
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                now = time.time()
                last = {"step": step, **{k: acc[k] / n for k, n in acc["n"].items()},
                        "perplexity": float(model.vq.perplexity(torch.cat(acc["codes"]))),
                        "lr": lr_at(step - 1, cfg.train), "grad_norm": float(gnorm),
                        "audio_s_per_s": acc["audio_s"] / (now - t_win), "elapsed_s": now - t_start}
                mf.write(json.dumps(last) + "\n")
                mf.flush()
                log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()))
                acc = {"n": {}, "audio_s": 0.0, "codes": []}
                t_win = now
            out_of_time = cfg.train.max_seconds and time.time() - t_start > cfg.train.max_seconds
            if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps or out_of_time:
                save()
            if out_of_time:
                log(f"train.max_seconds={cfg.train.max_seconds} reached at step {step}; checkpoint saved")
                break
    pool.shutdown(wait=False, cancel_futures=True)
    return last
