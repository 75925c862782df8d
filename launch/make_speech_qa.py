"""SALM-style synthetic spoken QA shards (arXiv 2406.12946): (speech context, question, answer).

    python launch/make_speech_qa.py --config configs/speech_qa_tiny.yaml [source=audio input=DIR ...]
    # job array: worker.index=$SLURM_ARRAY_TASK_ID worker.count=N (finished parts are skipped)

source=text: passages of a text corpus spoken by TTS voices; source=audio: an audio dataset with
transcripts; source=audio_unlabeled: the same without transcripts, pseudo-labelled by faster-whisper.
Contexts are tokenized by the speech tokenizer (speech_tokenizer=DIR from launch/train_speech_tokenizer.py),
QA pairs written by SmolLM2 (qa.generator=lm) or the extractive templates (qa.generator=template) and
filtered; output is `interleaved` shards usable as a mixture source (see megaspeech/synth/speech_qa.py).
"""
from __future__ import annotations

import json
import logging
import sys

from megaspeech.config.cli import parse_args
from megaspeech.synth.speech_qa_shards import SpeechQAConfig, make_speech_qa


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(SpeechQAConfig, __doc__, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(json.dumps(make_speech_qa(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
