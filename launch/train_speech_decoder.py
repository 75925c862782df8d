"""Train the speech decoder (codes -> mel -> waveform) for a trained speech tokenizer.

    python launch/train_speech_decoder.py --config configs/speech_decoder.yaml \
        run.dir=runs/speech_decoder train.tokenizer=runs/speech_tokenizer_tiny/tokenizer train.data=runs/speech/train
Re-running the same command resumes from RUN_DIR/checkpoint.pt. The decoder is RUN_DIR/decoder
(megaspeech.speech.speech_decoder.load_speech_decoder); benchmarks/speech_decoder.py measures it.
"""
from megaspeech.config.cli import parse_args
from megaspeech.config.speech_decoding import SpeechDecoderTrainingConfig
from megaspeech.speech.decoder_training import train

if __name__ == "__main__":
    cfg, _ = parse_args(SpeechDecoderTrainingConfig, __doc__)
    train(cfg)
