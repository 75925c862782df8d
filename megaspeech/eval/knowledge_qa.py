"""Knowledge spoken QA in GLM-4-Voice's shape (Web Questions, Llama Questions, TriviaQA): questions
written by people, asked with no passage, spoken by the suite's TTS voices (SALM's method 1: TTS of a
text QA set) for S->T or written for T->T; the answer is the model's greedy text.

Sources (`knowledge_qa` of the suite config):
  fanoutqa:dev   the single-hop sub-questions of FanOutQA's dev set (Zhu et al. 2024, CC BY-SA 4.0), each
                 written by a person with its answer from English Wikipedia ("In which state was Lyndon
                 B. Johnson born?" -> "Texas"); kept: text answers of 1-5 words and years. The data ships
                 in the `fanoutqa` wheel (`pip install --no-deps fanoutqa==1.1.1`; its code is never
                 imported, only fanoutqa/data/fanout-final-dev.json is read).
  PATH.jsonl     any file of lines {"question": str, "answers": [str, ...]} ("answer": str is read as a
                 one-alias list), e.g. TriviaQA or Web Questions exported to that shape.

Scoring (the paper reports accuracy of the answer): both sides normalised as SQuAD/TriviaQA do
(lower case, punctuation and the articles a/an/the dropped, spaces collapsed); `answer match`: some
gold alias occurs in the model's answer as a run of whole words (the answer may say more:
"he was born in texas" matches "Texas"); `exact match`: the answer equals an alias. Both are
proportions with Wilson intervals.
"""
from __future__ import annotations

import importlib.util
import json
import re
import string
import time
from pathlib import Path

import numpy as np
import torch

from megaspeech.eval.lm import greedy
from megaspeech.eval.prompts import qa_prompt
from megaspeech.eval.scores import proportion

FANOUTQA = "fanoutqa:dev"
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(s: str) -> str:
    """SQuAD/TriviaQA answer normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", str(s).lower().translate(_PUNCT)).split())


def answer_match(pred: str, answers: list[str]) -> bool:
    """Some normalised alias occurs in the normalised prediction as whole words."""
    p = f" {normalize(pred)} "
    return any(a and f" {a} " in p for a in map(normalize, answers))


def exact_match(pred: str, answers: list[str]) -> bool:
    return normalize(pred) in {normalize(a) for a in answers}


def _fanoutqa_dev() -> list[dict]:
    spec = importlib.util.find_spec("fanoutqa")  # the package is not imported (its code needs network libs)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("knowledge_qa=fanoutqa:dev needs the fanoutqa wheel: pip install --no-deps "
                                "fanoutqa==1.1.1 (README install), or set knowledge_qa to a jsonl of "
                                "{question, answers[]} (or knowledge_qa_items=0 to turn the task off)")
    path = Path(spec.submodule_search_locations[0]) / "data" / "fanout-final-dev.json"
    out, seen = [], set()

    def leaves(node):
        for c in node.get("decomposition", []):
            yield from leaves(c) if c.get("decomposition") else [c]
    for top in json.loads(path.read_text()):
        for q in leaves(top):
            a = q["answer"]
            if isinstance(a, str) and 1 <= len(a.split()) <= 5 or type(a) is int and 1000 <= a <= 2100:
                if q["question"] not in seen:
                    seen.add(q["question"])
                    out.append({"source_id": q["id"], "question": q["question"].strip(), "answers": [str(a)]})
    return out


def read_jsonl(path: str | Path) -> list[dict]:
    """Lines {"question": str, "answers": [str, ...]} -> items; a bad line is named with the fix."""
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            x = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e}); each line is "
                             f"{{\"question\": ..., \"answers\": [...]}}") from None
        answers = x.get("answers", [x["answer"]] if isinstance(x.get("answer"), str) else None)
        if not isinstance(x.get("question"), str) or not x["question"].strip():
            raise ValueError(f"{path}:{i}: field 'question' missing or empty (a non-empty string)")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise ValueError(f"{path}:{i}: field 'answers' must be a non-empty list of non-empty strings")
        out.append({"source_id": f"{Path(path).name}:{i}", "question": x["question"].strip(), "answers": answers})
    return out


def knowledge_items(source: str, n: int, seed: int) -> list[dict]:
    """n items (all if fewer) drawn with `seed` from a source (module docstring)."""
    if source == FANOUTQA:
        pool = _fanoutqa_dev()
    elif Path(source).is_file():
        pool = read_jsonl(source)
    else:
        raise FileNotFoundError(f"knowledge_qa={source}: neither {FANOUTQA} nor a jsonl file of "
                                f"{{question, answers[]}}")
    order = np.random.default_rng([seed, 7]).permutation(len(pool))[:n]
    return [{"id": f"kqa_{i:05d}", **pool[j]} for i, j in enumerate(order)]


def answers(ctx, prompts: list[np.ndarray]) -> list[str]:
    """Greedy text answers (text ids only; <|eos|>, <|bos|> or <|user|> ends one); a `plain` prompt
    keeps the first line, as a base model goes on after its answer."""
    v = ctx.v
    outs = greedy(ctx.lm, prompts, ctx.suite.max_answer_tokens, [v.eos_id, v.bos_id, v.special("<|user|>")],
                  allowed=torch.arange(v.text_size), batch_size=ctx.suite.batch_size)
    preds = [ctx.tok.decode(o).strip() for o in outs]
    return [p.split("\n")[0].strip() for p in preds] if ctx.suite.qa_prompt == "plain" else preds


def score(ctx, items: list[dict], direction: str) -> tuple[list[dict], list[str]]:
    """The two rows (answer match, exact match) of one direction and the model's answers."""
    src = direction.split("->")[0]
    if src == "S":
        ctx.need_speech([(it["question"], ctx.voice(it)) for it in items])
    t0 = time.perf_counter()
    prompts = [qa_prompt(ctx.v, ctx.tok, src, it["question"], None, lambda t, it=it: ctx.speak(t, it),
                         ctx.suite.qa_prompt) for it in items]
    preds = answers(ctx, prompts)
    am = np.array([answer_match(p, it["answers"]) for p, it in zip(preds, items)], float)
    em = np.array([exact_match(p, it["answers"]) for p, it in zip(preds, items)], float)
    ips = len(items) / (time.perf_counter() - t0)
    return [{**proportion(am, "answer match"), "items_per_s": ips},
            {**proportion(em, "exact match"), "items_per_s": ips}], preds


TASK = "knowledge QA"


def knowledge_task(ctx, items: dict, examples: dict, rows) -> None:
    """The knowledge QA rows of every requested direction (skipped ones named by rows.runnable)."""
    suite = ctx.suite
    items["knowledge_qa"] = knowledge_items(suite.knowledge_qa, suite.knowledge_qa_items, suite.seed)
    got, want = len(items["knowledge_qa"]), suite.knowledge_qa_items
    note = f"{got} of {want} requested items in {suite.knowledge_qa}" if got < want else ""
    for d in rows.runnable(TASK, suite.knowledge_qa_directions, ("answer match", "exact match")):
        res, preds = score(ctx, items["knowledge_qa"], d)
        for r in res:
            rows.add(TASK, d, r, note)
        examples[f"knowledge qa {d}"] = [(it["question"], it["answers"], p)
                                         for it, p in zip(items["knowledge_qa"][:5], preds[:5])]
