"""Train the supervised 12.5 Hz speech tokenizer (Whisper encoder + pooling + VQ, ASR loss).

    python launch/train_speech_tokenizer.py --config configs/speech_tokenizer_tiny.yaml \
        run.dir=runs/speech_tok train.data=runs/speech/train
Re-running the same command resumes from RUN_DIR/checkpoint.pt.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megaspeech.config.cli import parse_args  # noqa: E402
from megaspeech.speech.tokenizer_training import Config, train  # noqa: E402

if __name__ == "__main__":
    cfg, _ = parse_args(Config, __doc__)
    train(cfg)
