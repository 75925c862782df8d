"""Evaluation: the benchmark suite run by `launch/evaluate.py` (tasks built offline from held-out real
text, batched likelihood scoring, spoken QA generation, ASR/TTS WER, report tables with 95% confidence
intervals; entry point run.evaluate), held-out losses (heldout_loss.py) and the contamination check.
The trainer's own validation during training is megaspeech/train/validate.py."""
