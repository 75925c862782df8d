"""Configuration of the speech decoder (codes -> mel -> waveform) and of its training
(launch/train_speech_decoder.py; megaspeech.speech.decoder_training, megaspeech.speech.speech_decoder).

  model.objective     regression (L1/L2 on log-mel; the CPU preset) | flow (conditional flow matching,
                      OT-CFM as CosyVoice/GLM-4-Voice, sampled with model.flow_steps Euler steps)
  model.dim           channels of the conv stacks; code_layers at the code rate, mel_layers after the
                      upsampling to 100 frames/s, flow_layers in the flow's velocity estimator
  model.kernel        depthwise kernel of every ConvNeXt block (convolutions only: the receptive field,
                      hence the streaming look-ahead, is finite)
  vocoder.*           Vocos-style: ConvNeXt blocks on the mel predict STFT log-magnitude and phase, then
                      an inverse STFT (n_fft 640, hop 160); refine_iters fast Griffin-Lim projections
                      seeded by the predicted phase at inference (0: the network alone)
  train.tokenizer     the frozen speech tokenizer whose codes the decoder reads (its run_dir/tokenizer)
  train.data          `audio` shards (the tokenizer's: launch/make_speech_corpus.py, launch/ingest_audio.py)
  train.crop_codes    codes per training crop of the code->mel model (convolutions: crops train the same map)
  train.vocoder_seconds  seconds per training crop of the vocoder (on the true mel)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megaspeech.config.load import check


@dataclass
class CodeToMelConfig:
    objective: Literal["regression", "flow"] = "regression"
    loss: Literal["l1", "l2"] = "l1"  # regression loss on the normalised log-mel (and the flow's prior)
    dim: int = 192
    code_layers: int = 2
    mel_layers: int = 4
    kernel: int = 7
    flow_layers: int = 4
    flow_steps: int = 8  # Euler steps of the flow sampler
    sigma_min: float = 1e-4  # OT-CFM's minimum noise
    prior_weight: float = 1.0  # flow only: weight of the regression loss on the conditioning mel (mu)
    code_templates: bool = True  # a per-code mel table, set from the training data at step 0, under the convs

    def __post_init__(self):
        for name in ("dim", "code_layers", "mel_layers", "flow_layers", "flow_steps"):
            check(getattr(self, name) >= 1, f"model.{name}", "must be >= 1")
        check(self.kernel % 2 == 1, "model.kernel", "must be odd (centred convolutions)")
        check(0 <= self.sigma_min < 1, "model.sigma_min", "must be in [0, 1)")


@dataclass
class VocoderConfig:
    dim: int = 192
    layers: int = 6
    kernel: int = 7
    refine_iters: int = 0  # inference: fast Griffin-Lim projections seeded by the predicted phase (0 = none)
    magnitude_prior: bool = True  # predict log|STFT| as a correction of the mel filters' pseudo-inverse

    def __post_init__(self):
        check(self.refine_iters >= 0, "vocoder.refine_iters", "must be >= 0")
        check(self.dim >= 1 and self.layers >= 1, "vocoder.dim", "vocoder.dim and vocoder.layers must be >= 1")
        check(self.kernel % 2 == 1, "vocoder.kernel", "must be odd (centred convolutions)")


@dataclass
class SpeechDecoderRunConfig:
    dir: str = "runs/speech_decoder"
    seed: int = 1234
    resume: bool = True  # continue from RUN_DIR/checkpoint.pt when present


@dataclass
class SpeechDecoderTrainConfig:
    tokenizer: str = "runs/speech_tokenizer_tiny/tokenizer"
    data: str | list[str] = "runs/speech/train"
    steps: int = 2000  # each step trains the code->mel model and the vocoder once
    batch_size: int = 8
    crop_codes: int = 24
    vocoder_seconds: float = 1.0
    lr: float = 1e-3
    vocoder_lr: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    stft_weight: float = 1.0  # vocoder: multi-resolution STFT loss (spectral convergence + log magnitude)
    mel_weight: float = 1.0  # vocoder: L1 log-mel of its output vs the input mel
    mag_weight: float = 1.0  # vocoder: L1 log-magnitude of its predicted spectrum vs the true STFT
    phase_weight: float = 1.0  # vocoder: anti-wrapping phase losses of its predicted spectrum (APNet)
    checkpoint_every: int = 200
    log_every: int = 20
    max_seconds: float = 0.0  # wall-clock budget; 0 = none. Stops (and checkpoints) when exceeded
    threads: int = 0  # torch threads; 0 = leave as is

    def __post_init__(self):
        check(self.steps > 0, "train.steps", "must be > 0")
        check(self.batch_size > 0, "train.batch_size", "must be > 0")
        check(self.crop_codes >= 1, "train.crop_codes", "must be >= 1")
        check(self.vocoder_seconds > 0, "train.vocoder_seconds", "must be > 0")
        check(self.lr > 0 and self.vocoder_lr > 0, "train.lr", "train.lr and train.vocoder_lr must be > 0")
        check(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
        check(self.checkpoint_every > 0 and self.log_every > 0, "train.checkpoint_every",
              "train.checkpoint_every and train.log_every must be > 0")


@dataclass
class SpeechDecoderTrainingConfig:
    run: SpeechDecoderRunConfig = field(default_factory=SpeechDecoderRunConfig)
    model: CodeToMelConfig = field(default_factory=CodeToMelConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    train: SpeechDecoderTrainConfig = field(default_factory=SpeechDecoderTrainConfig)
