"""Synthesize audio+transcript `audio` shards from real text with several TTS voices.

    python launch/make_speech_corpus.py --config configs/speech_corpus.yaml corpus.split=heldout \
        corpus.out_dir=runs/speech/heldout corpus.utterances=60
Re-running skips finished parts (job-array resume rule).
"""
import os
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from megaspeech.config.cli import parse_args  # noqa: E402
from megaspeech.speech.corpus import CorpusConfig, build_corpus  # noqa: E402


@dataclass
class Config:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)


if __name__ == "__main__":
    cfg, _ = parse_args(Config, __doc__)
    m = build_corpus(cfg.corpus)
    print(f"wrote {m['samples']} utterances in {len(m['shards'])} shards to {cfg.corpus.out_dir}")
