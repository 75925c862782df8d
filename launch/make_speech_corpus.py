"""Synthesize audio+transcript `audio` shards from real text with several TTS voices.

    python launch/make_speech_corpus.py --config configs/speech_corpus.yaml corpus.split=heldout \
        corpus.out_dir=runs/speech/heldout corpus.utterances=60
Re-running skips finished parts (job-array resume rule).
"""
import os
from dataclasses import dataclass, field

os.environ.setdefault("OMP_NUM_THREADS", "1")

from megaspeech.config.cli import parse_args
from megaspeech.speech.corpus import CorpusConfig, build_corpus


@dataclass
class Config:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)


if __name__ == "__main__":
    cfg, _ = parse_args(Config, __doc__)
    m = build_corpus(cfg.corpus)
    print(f"wrote {m['samples']} utterances in {len(m['shards'])} shards to {cfg.corpus.out_dir}")
