"""The recipe pipeline's config (configs/pipeline/*.yaml; launch/pipeline.py).

Every stage names the preset of its standalone tool (`config`) and dotted `overrides` on top of it,
so a stage's settings are exactly that tool's config; the pipeline adds only the links (input and
output paths under run.dir, the vocabulary derived from the speech tokenizer's codebook).

  run.dir            RUN: every stage writes RUN/<stage>/ (megaspeech.pipeline.layout)
  run.variant        pretrain/export/eval into RUN/<stage>-<variant>/ (ablations over the same data)
  init_from_hf       null: from scratch (SentencePiece trained by the text stage, the pretrain preset's
                     model); `smollm2`: SmolLM2-135M-Instruct (megaspeech.model.smollm2, built once) or any HF
                     Llama-family dir: text shards in its tokenizer's vocabulary, pretrain initialised from it
  text.heldout_text  not used for training: the eval stage's held-out speech pairs carry their own text
  speech_shards.real_audio  real audio for the unsupervised speech set (codes only), beside the TTS corpus
  pretrain.mixture   the data fragment (configs/data/mixture_glm4voice.yaml): its speech sources'
                     weights are replaced by one epoch of their tokens over the run's token budget
  pretrain.speech_share_max   cap on the one-epoch speech sources' share (0.1, the paper's proportion)
  pretrain.interleaved_scale  1 = the recipe; 0 = ablation without interleaved data (its share goes to
                     text and speech); 2 = interleaved share doubled (text and speech shrink to fit)
  eval.suite         the evaluation suite config of megaspeech.eval (called when importable)
"""
from __future__ import annotations

from dataclasses import dataclass, field

from megaspeech.config.load import check


@dataclass
class RunSection:
    dir: str = "runs/pipeline"
    seed: int = 0
    # "" = the recipe; a name = pretrain/export/eval in RUN/<stage>-<name>/ over the same data stages,
    # reported in RUN/report-<name>.{md,json} (the ablations: pretrain.interleaved_scale=0 or 2)
    variant: str = ""

    def __post_init__(self):
        check(self.variant == "" or self.variant.replace("_", "").isalnum(), "run.variant",
              f"letters, digits and _ only, got {self.variant!r}")


@dataclass
class StageSection:
    config: str = ""  # the standalone tool's preset (configs/...)
    overrides: list[str] = field(default_factory=list)  # dotted overrides on top of it
    nproc: int = 1  # training stages: processes (torch.distributed.run)


@dataclass
class SpeechCorpusSection(StageSection):
    heldout_utterances: int = 40  # held-out split (disjoint SOTU addresses) for the eval stage


@dataclass
class SpeechShardsSection(StageSection):
    # real audio (files, dirs, globs or `audio` shard dirs, e.g. the output of the real-audio
    # ingestion tool) tokenized into the unsupervised speech set beside the TTS corpus
    real_audio: list[str] = field(default_factory=list)


@dataclass
class PretrainSection(StageSection):
    mixture: str = "configs/data/mixture_glm4voice.yaml"
    interleaved_scale: float = 1.0
    text_share: float = 0.30  # GLM-4-Voice: 30% text
    # at most this share of the budget for the one-epoch speech sources (the paper's 1T run: 300B text,
    # 600B interleaved, so ~10% speech); more speech than that is scaled down, not seen completely
    speech_share_max: float = 0.10

    def __post_init__(self):
        check(self.interleaved_scale >= 0, "pretrain.interleaved_scale", "must be >= 0")
        check(0 < self.text_share < 1, "pretrain.text_share", "must be in (0, 1)")
        check(0 < self.speech_share_max <= 1 - self.text_share, "pretrain.speech_share_max",
              f"must be in (0, 1 - text_share = {1 - self.text_share:g}]")


@dataclass
class EvalSection:
    suite: str = ""  # megaspeech.eval suite config; "" = held-out losses only
    overrides: list[str] = field(default_factory=list)  # on the suite config (item counts, directions...)
    heldout_limit: int = 200  # held-out pairs scored for the text / speech / ASR / TTS losses
    batch_size: int = 8


@dataclass
class PipelineConfig:
    run: RunSection = field(default_factory=RunSection)
    init_from_hf: str | None = None
    text: StageSection = field(default_factory=lambda: StageSection(config="configs/data/demo.yaml"))
    speech_corpus: SpeechCorpusSection = field(default_factory=lambda: SpeechCorpusSection(
        config="configs/speech_corpus.yaml"))
    tokenizer: StageSection = field(default_factory=lambda: StageSection(config="configs/speech_tokenizer_tiny.yaml"))
    speech_decoder: StageSection = field(default_factory=lambda: StageSection(config="configs/speech_decoder.yaml"))
    speech_shards: SpeechShardsSection = field(default_factory=lambda: SpeechShardsSection(
        config="configs/speech_tokenize.yaml"))
    text_to_token: StageSection = field(default_factory=lambda: StageSection(config="configs/text_to_token_tiny.yaml"))
    interleaved: StageSection = field(default_factory=lambda: StageSection(config="configs/interleave_tiny.yaml"))
    speech_qa: StageSection = field(default_factory=lambda: StageSection(config="configs/speech_qa_tiny.yaml"))
    pretrain: PretrainSection = field(default_factory=lambda: PretrainSection(config="configs/tiny.yaml"))
    export: StageSection = field(default_factory=lambda: StageSection(config="configs/hf/export.yaml"))
    eval: EvalSection = field(default_factory=EvalSection)
