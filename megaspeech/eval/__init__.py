"""Evaluation: held-out loss during training (validation.py), and the benchmark suite run by
`launch/evaluate.py` (tasks built offline from held-out real text, batched likelihood scoring, spoken
QA generation, ASR/TTS WER, report tables with 95% confidence intervals; entry point run.evaluate)."""
