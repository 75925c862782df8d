"""Train the supervised 12.5 Hz speech tokenizer (Whisper encoder + pooling + VQ, ASR loss).

    python launch/train_speech_tokenizer.py --config configs/speech_tokenizer_tiny.yaml \
        run.dir=runs/speech_tok train.data=runs/speech/train
Re-running the same command resumes from RUN_DIR/checkpoint.pt.
"""
import os

from megaspeech.config.cli import parse_args
from megaspeech.speech.tokenizer_training import SpeechTokenizerTrainingConfig, train

if __name__ == "__main__":
    cfg, _ = parse_args(SpeechTokenizerTrainingConfig, __doc__)
    train(cfg)
