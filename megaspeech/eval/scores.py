"""Metrics with 95% confidence intervals, and the Markdown table of a suite's results.

  accuracy (two-choice tasks)  per-item score 1 / 0.5 (tie) / 0; Wilson score interval on the mean
  exact match (QA)             SQuAD normalization (lowercase, no punctuation or articles); a proportion:
                               Wilson score interval (0/100 -> [0, 3.7], where a normal one collapses)
  token F1 (QA)                not a proportion: normal interval of the per-item mean, clipped to [0, 100]
                               (NaN below 2 items)
  WER (ASR / TTS)              corpus WER (total errors / total reference words); percentile bootstrap
                               over utterances (1,000 resamples, seeded)
  loss (nats/token)            token-weighted mean NLL of independent units (sequences, packed rows);
                               the ratio estimator's normal interval over the units (ratio_ci)
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter

import numpy as np

Z = 1.959964


def wilson(mean: float, n: int) -> list[float]:
    if n == 0:
        return [math.nan, math.nan]
    d = 1 + Z * Z / n
    c = (mean + Z * Z / (2 * n)) / d
    h = Z * math.sqrt(mean * (1 - mean) / n + Z * Z / (4 * n * n)) / d
    return [100 * max(0.0, c - h), 100 * min(1.0, c + h)]


def proportion(scores: np.ndarray, metric: str = "accuracy") -> dict:
    """Every proportion of the suite (two-choice accuracy, exact match): mean of per-item scores in
    [0, 1] with its Wilson interval, in percent."""
    m = float(np.mean(scores)) if len(scores) else math.nan
    return {"metric": metric, "value": 100 * m, "n": int(len(scores)), "ci95": wilson(m, len(scores))}


def accuracy(scores: np.ndarray) -> dict:
    return proportion(scores, "accuracy")


def ratio_ci(nll: np.ndarray, tokens: np.ndarray) -> tuple[float, list[float]]:
    """Token-weighted mean loss sum(nll) / sum(tokens) over units i (nll[i]: a unit's summed NLL,
    tokens[i]: its scored tokens) and its 95% interval. The tokens of a unit are not independent, so
    the variance is over units: the linearised ratio estimator, residual (nll_i - mean * tokens_i)."""
    nll, tokens = np.asarray(nll, np.float64), np.asarray(tokens, np.float64)
    mean = float(nll.sum() / tokens.sum())
    r = (nll - mean * tokens) / tokens.mean()
    half = Z * math.sqrt(max(np.var(r, ddof=1) / len(r), 0.0)) if len(r) > 1 else math.nan
    return mean, [mean - half, mean + half]


def mean_ci(x: np.ndarray, metric: str) -> dict:
    """Mean of per-item scores in [0, 1] (not a proportion: token F1) and its normal interval, clipped
    to [0, 100] percent; NaN (not [0, 100]) below 2 items, where there is no variance estimate."""
    n = len(x)
    m = float(np.mean(x)) if n else math.nan
    h = Z * float(np.std(x, ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    lo, hi = np.clip([m - h, m + h], 0.0, 1.0)  # np.clip keeps NaN (max/min would turn it into 0 / 1)
    return {"metric": metric, "value": 100 * m, "n": n, "ci95": [100 * float(lo), 100 * float(hi)]}


def normalize_answer(s: str) -> list[str]:
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", s).split()


def em_f1(pred: str, gold: str) -> tuple[float, float]:
    p, g = normalize_answer(pred), normalize_answer(gold)
    em = float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if not p or not g or common == 0:
        return em, float(p == g)
    prec, rec = common / len(p), common / len(g)
    return em, 2 * prec * rec / (prec + rec)


def wer_result(errors: np.ndarray, words: np.ndarray, seed: int = 0) -> dict:
    n = len(errors)
    value = 100 * errors.sum() / max(words.sum(), 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (1000, n))
    boots = 100 * errors[idx].sum(1) / np.maximum(words[idx].sum(1), 1)
    return {"metric": "WER", "value": float(value), "n": n,
            "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]}


def markdown(rows: list[dict]) -> str:
    """Every row: a value with its interval, or "skipped: <reason>"; `note` (a substitution, fewer
    items than asked) in the last column."""
    out = ["| task | direction | metric | value | 95% CI | items | items/s | note |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        note = r.get("note", "").replace("|", "/")
        if r.get("skipped"):
            out.append(f"| {r['task']} | {r['direction']} | {r.get('metric', '')} | skipped: {r['skipped']} | | | | "
                       f"{note} |")
            continue
        lo, hi = r["ci95"]
        ips = f"{r['items_per_s']:.0f}" if r.get("items_per_s") else ""
        f = ".3f" if r["metric"] == "nats/token" else ".1f"
        out.append(f"| {r['task']} | {r['direction']} | {r['metric']} | {r['value']:{f}} | {lo:{f}}-{hi:{f}} | "
                   f"{r['n']} | {ips} | {note} |")
    return "\n".join(out)
