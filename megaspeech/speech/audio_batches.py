"""Shuffled, resumable batches of (audio, transcript) from `audio` shards: what the speech tokenizer
trains on (megaspeech.speech.tokenizer_training), with optional packing of consecutive utterances
and per-epoch seeded augmentation."""
from __future__ import annotations

import numpy as np

from megaspeech.data.shards import open_dataset
from megaspeech.speech.audio import SAMPLE_RATE, decode_audio
from megaspeech.speech.audio_shards import audio_bytes
from megaspeech.speech.augment import AugmentConfig, augment


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


def audio_chunks(data: AudioBatches, chunk: int = 16):
    """Every training item's audio, in order, `chunk` items at a time."""
    for s in range(0, len(data), chunk):
        yield data._load(range(s, min(s + chunk, len(data))))[0]
