"""Speech decoder directories for the generation and TTS-row tests, written by the decoder's own
save_speech_decoder: a small randomly initialised one (shapes, identity of paths, not quality) and a
planted one whose every waveform is silence (its code->mel output and its vocoder's magnitudes are
set to constants: the audio cannot depend on the codes)."""
from __future__ import annotations

from pathlib import Path

import torch

# the decoder module's own names for its parts (wherever their configs live)
from megaspeech.speech.speech_decoder import (N_MELS, CodeToMel, CodeToMelConfig, Vocoder, VocoderConfig,
                                              frames_per_code, save_speech_decoder)

FRAME_RATE = 12.5  # the tokenizer's pool 4


def small_decoder(out: Path, codebook_size: int, silent: bool = False) -> Path:
    torch.manual_seed(0)
    c2m = CodeToMel(CodeToMelConfig(dim=16, code_layers=1, mel_layers=1, kernel=3), codebook_size,
                    frames_per_code(FRAME_RATE), N_MELS)
    voc = Vocoder(VocoderConfig(dim=16, layers=1, kernel=3), N_MELS)
    if silent:
        with torch.no_grad():
            c2m.to_mel.weight.zero_()
            c2m.to_mel.bias.zero_()
            voc.head.weight.zero_()
            voc.head.bias.zero_()
            voc.head.bias[:voc.head.bias.shape[0] // 2] = -30.0  # log-magnitude: |STFT| = e^-30 everywhere
    return save_speech_decoder(out, c2m, voc, FRAME_RATE, codebook_size=codebook_size)
