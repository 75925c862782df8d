"""RUN/report.json + RUN/report.md: every finished stage's metrics, outputs and time (written after each
pipeline invocation from the stage markers; the ablation table in the README is built from these)."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from megaspeech.pipeline.layout import STAGES


def write_report(run: Path, done: dict[str, dict], cfg, variant: str = "") -> dict:
    stages = {s: {"seconds": round(m["seconds"], 1), "metrics": m["metrics"], "outputs": m["outputs"],
                  "hash": m["hash"]} for s, m in done.items()}
    name = f"report-{variant}" if variant else "report"
    report = {"run": str(run), "variant": variant, "config": dataclasses.asdict(cfg),
              "stages_done": [s for s in STAGES if s in done],
              "stages_missing": [s for s in STAGES if s not in done and s != "report"],
              "total_seconds": round(sum(m["seconds"] for m in done.values()), 1), "stages": stages}
    _atomic(run / f"{name}.json", json.dumps(report, indent=1, default=str))
    lines = [f"# Pipeline report: {run}" + (f" (variant {variant})" if variant else ""), "",
             f"Stages done: {', '.join(report['stages_done']) or 'none'}; missing: "
             f"{', '.join(report['stages_missing']) or 'none'}; stage time {report['total_seconds']:.0f} s.", "",
             "| stage | time (s) | metrics |", "|---|---:|---|"]
    for s in report["stages_done"]:
        st = stages[s]
        lines.append(f"| {s} | {st['seconds']:.0f} | {_fmt_metrics(st['metrics'])} |")
    ev = stages.get("eval", {}).get("metrics", {})
    if ev:
        lines += ["", "## Held-out losses (nats/token, 95% interval)", "", "| loss | value | 95% CI |", "|---|---:|---|"]
        for k in ("text", "speech", "asr", "tts"):
            if f"heldout_loss_{k}" in ev:
                lo, hi = ev[f"heldout_loss_{k}_ci95"]
                lines.append(f"| {k} | {ev[f'heldout_loss_{k}']:.4f} | [{lo:.4f}, {hi:.4f}] |")
        suite = ev.get("suite")
        lines += ["", "## Evaluation suite (megaspeech.eval)", "",
                  suite["table"] if isinstance(suite, dict) else str(suite)]
    _atomic(run / f"{name}.md", "\n".join(lines) + "\n")
    return report


def _fmt_metrics(m: dict) -> str:
    out = []
    for k, v in m.items():
        if k == "suite":  # its own section
            continue
        if isinstance(v, float):
            out.append(f"{k}={v:.4g}")
        elif isinstance(v, dict):
            out.append(f"{k}=" + ",".join(f"{a}:{b:.3g}" if isinstance(b, float) else f"{a}:{b}" for a, b in v.items()))
        else:
            out.append(f"{k}={v}")
    return "; ".join(out).replace("|", "/")


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
