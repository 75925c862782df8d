"""The suite's TTS row judged on audio: the codes the model generates for a held-out sentence are
decoded to a waveform by a speech decoder (megaspeech.speech.speech_decoder: codes -> mel -> 16 kHz
audio) and transcribed by the unmodified Whisper tiny.en (megaspeech.speech.whisper_ct2.load_whisper,
the model the speech tokenizer starts from, never trained here): an independent listener. The speech
tokenizer's own Whisper decoder, which was trained together with the codes, reads them without audio
only in the diagnostic row (synth.text_to_token_eval.read_codes).

WER per utterance (speech.asr.word_errors), corpus WER with a percentile bootstrap over utterances
(eval.scores.wer_result). Transcription is Whisper's greedy decoding over its 30 s window (the ASR
row's and the reader's rule), capped at 3 tokens per reference word + 16 so runaway output on noise
stays bounded. A generation with no codes has no audio: its transcript is empty (every word deleted).
"""
from __future__ import annotations

import numpy as np
import torch

from megaspeech.eval.scores import wer_result

NO_DECODER = "no speech_decoder set (the TTS row hears the generated codes through one)"


@torch.no_grad()
def listen(whisper, waves: list[np.ndarray], refs: list[str], batch: int = 8) -> list[str]:
    """Whisper's greedy transcript of each 16 kHz waveform (empty for an empty one); audio past
    Whisper's 30 s window is cut."""
    from megaspeech.speech.asr import transcribe_tokens
    from megaspeech.speech.audio import MAX_SAMPLES, log_mel
    hyps = [""] * len(waves)
    todo = [i for i, w in enumerate(waves) if len(w)]
    for j in range(0, len(todo), batch):
        idx = todo[j:j + batch]
        feats = torch.from_numpy(np.stack([log_mel(np.asarray(waves[i][:MAX_SAMPLES], np.float32)) for i in idx]))
        enc = whisper.model.model.encoder(feats).last_hidden_state
        cap = 3 * max(len(refs[i].split()) for i in idx) + 16
        for i, t in zip(idx, transcribe_tokens(whisper, enc, max_new_tokens=cap)):
            hyps[i] = whisper.decode_text(t).strip()
    return hyps


def audio_wer(decoder_dir: str, codes: list[np.ndarray], refs: list[str], seed: int = 0,
              vocoder: str = "trained", speech_size: int | None = None) -> tuple[dict, list[str]]:
    """codes (raw codes 0..K-1 per utterance) -> waveforms -> Whisper tiny.en -> (wer_result row with
    the decoder named in `pipeline`, transcripts). speech_size: the model's (a decoder trained for
    another codebook is refused)."""
    from megaspeech.speech.asr import word_errors
    from megaspeech.speech.speech_decoder import load_speech_decoder
    from megaspeech.speech.whisper_ct2 import load_whisper
    dec = load_speech_decoder(decoder_dir, vocoder=vocoder, codebook_size=speech_size)
    waves = [dec.synthesize(np.asarray(c, np.int64)) if len(c) else np.zeros(0, np.float32) for c in codes]
    hyps = listen(load_whisper(), waves, refs)
    errs = np.array([word_errors(r, h) for r, h in zip(refs, hyps)])
    seconds = sum(len(w) for w in waves) / dec.sample_rate
    return {**wer_result(errs[:, 0], errs[:, 1], seed), "audio_seconds": seconds,
            "pipeline": f"codes -> {decoder_dir} ({vocoder} vocoder) -> Whisper tiny.en"}, hyps
