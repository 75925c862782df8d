"""Hearing speech codes: the speech decoder, codes -> mel (megaspeech.speech.decoder_model) ->
waveform (the trained vocoder, megaspeech.speech.vocoder, or Griffin-Lim), loaded from one directory.

    dec = load_speech_decoder("runs/speech_decoder/decoder")      # vocoder="griffin_lim": no trained vocoder
    wave = dec.synthesize(codes)                                  # raw codes int [T] -> float32 [T * 16000 / frame_rate]
    for chunk in dec.stream(code_iterator, block=10): play(chunk)  # audio as blocks of codes arrive

A decoder directory (save_speech_decoder, written atomically: temp dir, then rename):
    decoder.json              format, codebook_size, frame_rate, the mel settings, model and vocoder
                              configs, the tokenizer it was trained for (path + fingerprint), trained_on
    code_to_mel.safetensors   CodeToMel weights (with the mel normalisation buffers)
    vocoder.safetensors       Vocoder weights
Codes are the tokenizer's raw codes 0..K-1 (unified vocab ids minus vocab.speech_offset).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from megaspeech.config.speech_decoding import CodeToMelConfig, VocoderConfig
from megaspeech.fs import dir_staging, swap_dir
from megaspeech.speech.decoder_mel import HOP, N_FFT, N_MELS, SAMPLE_RATE, frames_per_code, griffin_lim
from megaspeech.speech.decoder_model import CodeToMel
from megaspeech.speech.vocoder import Vocoder

FORMAT = "megaspeech-speech-decoder"
VOCODERS = ("trained", "griffin_lim")
GRIFFIN_LIM_ITERS = 32
_NOISE_FRAMES = 3000  # the flow's fixed x0 per frame index (30 s; longer outputs tile it)


class SpeechDecoder:
    """Code -> mel model + vocoder. frame_rate: codes per second (the tokenizer's); sample_rate 16000.

    Deterministic: the flow's starting noise is a fixed function of the frame index (seed 0), so
    synthesize() and stream() give the same audio for the same codes on every call.
    """

    sample_rate: int = SAMPLE_RATE

    def __init__(self, code_to_mel: CodeToMel, vocoder: Vocoder | None, frame_rate: float,
                 vocoder_kind: str = "trained", temperature: float = 1.0):
        if vocoder_kind not in VOCODERS:
            raise ValueError(f"speech decoder: vocoder={vocoder_kind!r} is not one of {', '.join(VOCODERS)}")
        if vocoder_kind == "trained" and vocoder is None:
            raise ValueError("speech decoder: vocoder='trained' needs a trained vocoder; pass vocoder='griffin_lim'")
        self.code_to_mel, self.vocoder = code_to_mel.eval(), (vocoder.eval() if vocoder is not None else None)
        self.vocoder_kind, self.frame_rate = vocoder_kind, float(frame_rate)
        self.frames_per_code = frames_per_code(frame_rate)
        if self.frames_per_code != code_to_mel.fpc:
            raise ValueError(f"speech decoder: frame_rate {frame_rate} means {self.frames_per_code} mel frames per "
                             f"code but the code->mel model was built for {code_to_mel.fpc}")
        self.samples_per_code = self.frames_per_code * HOP
        self.codebook_size = code_to_mel.codebook_size
        g = torch.Generator().manual_seed(0)
        self._noise = temperature * torch.randn(_NOISE_FRAMES, code_to_mel.n_mels, generator=g)

    # one utterance ------------------------------------------------------------------------
    def _noise_at(self, start: int, n: int) -> torch.Tensor:
        idx = torch.arange(start, start + n) % _NOISE_FRAMES
        return self._noise[idx][None]

    def _mel(self, codes: np.ndarray | list, start_code: int = 0) -> torch.Tensor:
        c = torch.as_tensor(np.asarray(codes, dtype=np.int64)).reshape(1, -1)
        if c.shape[1] == 0:
            raise ValueError("speech decoder: empty code sequence; give at least one code")
        noise = self._noise_at(start_code * self.frames_per_code, c.shape[1] * self.frames_per_code)
        return self.code_to_mel.generate(c, noise)[0]

    @torch.no_grad()
    def _wave(self, mel: torch.Tensor, refine_iters: int | None = None) -> torch.Tensor:
        if self.vocoder_kind == "griffin_lim":
            return griffin_lim(mel, GRIFFIN_LIM_ITERS)
        return self.vocoder(mel[None].float(), refine_iters)[0]

    def codes_to_mel(self, codes: np.ndarray) -> np.ndarray:
        """Raw codes int [T] (0..K-1) -> log-mel float32 [n_mels, T * frames_per_code] (100 frames/s)."""
        return self._mel(codes).numpy()

    def mel_to_wave(self, mel: np.ndarray, refine_iters: int | None = None) -> np.ndarray:
        """log-mel float32 [n_mels, F] (megaspeech.speech.decoder_mel) -> float32 [F * 160] at 16 kHz.
        refine_iters: the trained vocoder's consistency projections (default: its vocoder.refine_iters)."""
        return self._wave(torch.as_tensor(mel, dtype=torch.float32), refine_iters).numpy()

    def synthesize(self, codes: np.ndarray) -> np.ndarray:
        """Raw codes int [T] -> float32 [T * samples_per_code] at 16 kHz (pool 4: 1280 samples per code)."""
        return self._wave(self._mel(codes)).numpy()

    # streaming ------------------------------------------------------------------------------
    @property
    def lookahead_codes(self) -> int:
        """Codes that must follow a code before its audio is final (the models' right receptive field)."""
        frames = self.code_to_mel.right_context_frames()
        frames += (GRIFFIN_LIM_ITERS * N_FFT // HOP if self.vocoder_kind == "griffin_lim"
                   else self.vocoder.right_context_frames())
        return -(-frames // self.frames_per_code)

    def stream(self, codes: Iterable[int], block: int = 10) -> Iterator[np.ndarray]:
        """Audio chunks (float32, 16 kHz) as blocks of `block` codes arrive (GLM-4-Voice starts after 10).

        Each block re-decodes a window from `lookahead_codes` before the first unplayed code to the
        newest code and yields the samples of the codes that have `lookahead_codes` codes after them;
        the end of the input yields the rest. With the trained vocoder and vocoder.refine_iters 0 the
        concatenated chunks equal synthesize(all codes) up to float rounding; with consistency projections
        (refine_iters > 0, or Griffin-Lim: phase from iterations over the whole window) they are close,
        not equal. The first chunk comes once block > lookahead_codes.
        """
        if block < 1:
            raise ValueError(f"speech decoder: stream block={block} must be >= 1 code")
        buf: list[int] = []
        done = 0  # samples yielded so far (always a whole number of codes)
        la, spc = self.lookahead_codes, self.samples_per_code

        def emit(final: bool) -> np.ndarray | None:
            nonlocal done
            safe = len(buf) if final else max(0, len(buf) - la)
            if safe * spc <= done:
                return None
            start = max(0, done // spc - la)
            wave = self._wave(self._mel(buf[start:], start))
            off = start * spc
            chunk = wave[done - off:safe * spc - off].numpy()
            done = safe * spc
            return chunk

        for c in codes:
            buf.append(int(c))
            if len(buf) % block == 0 and (chunk := emit(False)) is not None:
                yield chunk
        if buf and (chunk := emit(True)) is not None:
            yield chunk


def _check_codebook(found: int, expected: int | None, where: str) -> None:
    if expected is not None and int(expected) != found:
        raise ValueError(f"speech decoder {where} was trained for a codebook of {found} codes, but the tokenizer "
                         f"has {expected}: its codes mean nothing to this decoder; train a decoder for that "
                         f"tokenizer (launch/train_speech_decoder.py train.tokenizer=...) or use its own tokenizer")


def save_speech_decoder(out_dir: str | Path, code_to_mel: CodeToMel, vocoder: Vocoder, frame_rate: float,
                        tokenizer: dict | None = None, codebook_size: int | None = None,
                        trained_on: dict | None = None) -> Path:
    """Write a decoder directory atomically. tokenizer: {"path", "fingerprint"} of the tokenizer it
    decodes; codebook_size: that tokenizer's K, refused (ValueError) when it differs from the model's."""
    from safetensors.torch import save_file
    _check_codebook(code_to_mel.codebook_size, codebook_size, f"being saved to {out_dir}")
    out_dir = Path(out_dir)
    tmp = dir_staging(out_dir, "decoder.json", "speech decoder")
    save_file({k: v.contiguous() for k, v in code_to_mel.state_dict().items()}, str(tmp / "code_to_mel.safetensors"))
    save_file({k: v.contiguous() for k, v in vocoder.state_dict().items()}, str(tmp / "vocoder.safetensors"))
    meta = {"format": FORMAT, "version": 1, "codebook_size": code_to_mel.codebook_size, "frame_rate": frame_rate,
            "mel": {"sample_rate": SAMPLE_RATE, "hop": HOP, "n_fft": N_FFT, "n_mels": code_to_mel.n_mels},
            "model": dataclasses.asdict(code_to_mel.cfg), "vocoder": dataclasses.asdict(vocoder.cfg),
            "tokenizer": tokenizer, "trained_on": trained_on}
    (tmp / "decoder.json").write_text(json.dumps(meta, indent=1))
    return swap_dir(tmp, out_dir)


def read_decoder_meta(path: str | Path) -> dict:
    """decoder.json of a decoder directory (no weights read), checked for the format and the mel settings."""
    f = Path(path) / "decoder.json"
    if not f.is_file():
        raise FileNotFoundError(f"{path} is not a speech decoder directory (no decoder.json); train one with "
                                f"launch/train_speech_decoder.py and pass its RUN_DIR/decoder")
    meta = json.loads(f.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{f}: format {meta.get('format')!r} is not {FORMAT!r}; pass a directory written by "
                         f"launch/train_speech_decoder.py")
    want = {"sample_rate": SAMPLE_RATE, "hop": HOP, "n_fft": N_FFT, "n_mels": N_MELS}
    if meta["mel"] != want:
        raise ValueError(f"{f}: mel settings {meta['mel']} differ from this megaspeech's {want} "
                         f"(megaspeech.speech.decoder_mel); retrain the decoder")
    return meta


def load_speech_decoder(path: str | Path, vocoder: str = "trained", codebook_size: int | None = None,
                        temperature: float = 1.0) -> SpeechDecoder:
    """Load a decoder directory (save_speech_decoder). vocoder: "trained" (the Vocos-style vocoder
    trained with it) or "griffin_lim" (no-training baseline on the same predicted mel).
    codebook_size: the K of the tokenizer whose codes will be decoded; a decoder trained for another K
    is refused with a ValueError naming both. temperature: scale of the flow's starting noise."""
    from safetensors.torch import load_file
    path = Path(path)
    meta = read_decoder_meta(path)
    _check_codebook(int(meta["codebook_size"]), codebook_size, str(path))
    # decoders written before code templates and the magnitude prior existed have neither
    c2m = CodeToMel(CodeToMelConfig(**{"code_templates": False, **meta["model"]}), int(meta["codebook_size"]),
                    frames_per_code(meta["frame_rate"]), meta["mel"]["n_mels"])
    voc = Vocoder(VocoderConfig(**{"magnitude_prior": False, **meta["vocoder"]}), meta["mel"]["n_mels"])
    for module, name in ((c2m, "code_to_mel.safetensors"), (voc, "vocoder.safetensors")):
        try:
            module.load_state_dict(load_file(str(path / name)))
        except (RuntimeError, OSError) as e:
            raise ValueError(f"{path / name}: does not fit decoder.json's model ({' '.join(str(e).split())[:300]}); "
                             f"the directory is damaged or mixed: retrain or copy it again") from None
    return SpeechDecoder(c2m, voc, meta["frame_rate"], vocoder, temperature)
