"""The config of `launch/generate.py` (one prompt -> the model's continuation, heard).

  model             a checkpoint (run dir, checkpoints dir or step dir; any TP/PP layout) or an
                    exported Hugging Face dir (config.json + vocab.json)
  text | wav        the prompt: written text, or a recording (any rate; resampled to 16 kHz) that the
                    run's speech tokenizer turns into codes; exactly one of them
  mode              X->Y: X the prompt's modality (T with `text`, S with `wav`), Y what the model
                    continues in, in the formats of the training samples (megaspeech.data.packing):
                      T->T  <|bos|> text                                 -> text until <|eos|>
                      T->S  <|bos|> text <|begin_of_speech|>              -> codes until <|end_of_speech|>
                      S->T  <|begin_of_speech|> codes <|end_of_speech|>   -> text until <|eos|>
                      S->S  <|begin_of_speech|> codes                     -> more codes until <|end_of_speech|>
  speech_tokenizer  the run's speech tokenizer dir (needed for a `wav` prompt)
  speech_decoder    a speech decoder dir (launch/train_speech_decoder.py; needed for speech output:
                    codes -> mel -> 16 kHz wav)
  vocoder           trained (the decoder's own vocoder) | griffin_lim (no-training baseline on the same mel)
  temperature       0 = greedy; else sampling from softmax(logits / temperature), restricted to top_p
  top_p             nucleus: the smallest set of tokens with probability mass >= top_p
  seed              the sampling generator's seed (same seed, same model -> same tokens)
  max_new           length cap in generated tokens (codes at 12.5 Hz: 250 = 20 s)
  min_new           the end token is refused before this many tokens
  out_dir           codes.npy, speech.wav, mel.png, generation.json
  stream            write the wav as blocks of codes arrive and report the first-audio latency
  block             codes per streamed block (GLM-4-Voice starts speaking after 10)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megaspeech.config.load import check

MODES = ("T->T", "T->S", "S->T", "S->S")


@dataclass
class GenerateConfig:
    model: str = ""
    text: str | None = None
    wav: str | None = None
    mode: Literal["T->T", "T->S", "S->T", "S->S"] = "T->S"
    speech_tokenizer: str | None = None
    speech_decoder: str | None = None
    vocoder: Literal["trained", "griffin_lim"] = "trained"
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    max_new: int = 250
    min_new: int = 0
    out_dir: str = "runs/generate"
    stream: bool = False
    block: int = 10

    def __post_init__(self):
        check(self.mode in MODES, "mode", f"must be one of {', '.join(MODES)} (prompt modality -> output modality)")
        check(self.vocoder in ("trained", "griffin_lim"), "vocoder", "must be trained or griffin_lim")
        check(self.temperature >= 0, "temperature", "must be >= 0 (0 = greedy)")
        check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        check(self.max_new >= 1, "max_new", "must be >= 1")
        check(0 <= self.min_new <= self.max_new, "min_new", "must be in [0, max_new]")
        check(self.block >= 1, "block", "must be >= 1 (codes per streamed block)")

    def check_prompt(self) -> None:
        """Exactly one prompt, of the mode's modality (called by the tool once the flags are applied)."""
        check(bool(self.model), "model", "set model=<checkpoint dir | step dir | exported HF dir>")
        check((self.text is None) != (self.wav is None), "text/wav",
              "give exactly one prompt: --text \"...\" (written) or --wav FILE (spoken)")
        want = "T" if self.text is not None else "S"
        check(self.mode[0] == want, "mode", f"{self.mode} starts from {'speech' if want == 'T' else 'text'}, but the "
              f"prompt is {'text' if want == 'T' else 'a recording'}: use {want}->T or {want}->S")
        if self.wav is not None:
            check(bool(self.speech_tokenizer), "speech_tokenizer",
                  "a --wav prompt needs the run's speech tokenizer dir (speech_tokenizer=RUN/tokenizer/tokenizer)")
        if self.mode.endswith("S"):
            check(bool(self.speech_decoder), "speech_decoder", "speech output needs a speech decoder dir "
                  "(speech_decoder=DIR written by launch/train_speech_decoder.py) to make the wav")
