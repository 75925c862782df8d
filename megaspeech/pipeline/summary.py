"""RUN/report.json + RUN/report.md: every finished stage's metrics, outputs and time (written after each
pipeline invocation from the stage markers; the ablation table of docs/recipe.md is built from these)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from megaspeech.fs import write_atomic
from megaspeech.pipeline.layout import STAGES


def write_report(run: Path, done: dict[str, dict], cfg, variant: str = "") -> dict:
    stages = {s: {"seconds": round(m["seconds"], 1), "metrics": m["metrics"], "outputs": m["outputs"],
                  "hash": m["hash"]} for s, m in done.items()}
    name = f"report-{variant}" if variant else "report"
    report = {"run": str(run), "variant": variant, "config": dataclasses.asdict(cfg),
              "stages_done": [s for s in STAGES if s in done],
              "stages_missing": [s for s in STAGES if s not in done and s != "report"],
              "total_seconds": round(sum(m["seconds"] for m in done.values()), 1), "stages": stages}
    write_atomic(run / f"{name}.json", json.dumps(report, indent=1, default=str))
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
    write_atomic(run / f"{name}.md", "\n".join(lines) + "\n")
    return report


def ablation_table(run: Path) -> str:
    """The recipe and its variants side by side (every RUN/report*.json; launch/pipeline.py --compare):
    interleaved share, final training losses, held-out losses and every evaluation-suite row, as
    value [95% CI]. Also written to RUN/ablation.md."""
    reports = {}
    for path in sorted(Path(run).glob("report*.json"), key=lambda f: (f.name != "report.json", f.name)):
        r = json.loads(path.read_text())
        reports[r.get("variant") or "recipe"] = r["stages"]
    if not reports:
        raise FileNotFoundError(f"{run}: no report*.json; run launch/pipeline.py with run.dir={run} first")
    # the data's own references for the speech loss (count n-grams of the training codes, scored on
    # the same held-out pairs): the same in every column
    evals = [st.get("eval", {}).get("metrics", {}) for st in reports.values()]
    heldout, ref = Path(run) / "speech_shards" / "heldout", {}
    if (heldout / "manifest.json").is_file() and any("heldout_loss_speech" in ev for ev in evals):
        from megaspeech.eval.heldout_loss import speech_ngram_losses
        limits = {ev["heldout_pairs"] for ev in evals if "heldout_pairs" in ev}
        if len(limits) != 1:
            raise ValueError(f"{run}: the reports scored {sorted(limits)} held-out pairs; rerun their eval "
                             f"stages with one eval.limit so the n-gram references fit every column")
        ref = speech_ngram_losses(Path(run) / "speech_shards" / "unsup", heldout, limits.pop())
    rows: dict[str, dict[str, str]] = {}

    def put(label: str, name: str, text: str) -> None:
        rows.setdefault(label, {})[name] = text

    for name, st in reports.items():
        pre = st.get("pretrain", {}).get("metrics", {})
        if "weights" in pre:
            put("interleaved share of tokens", name, f"{pre['weights'].get('interleaved', 0.0):.2f}")
        for k in ("final_loss_text", "final_loss_speech"):
            if k in pre:
                put(f"pre-training {k.replace('_', ' ')} (nats)", name, f"{pre[k]:.3f}")
        ev = st.get("eval", {}).get("metrics", {})
        for k in ("text", "speech", "asr", "tts"):
            if f"heldout_loss_{k}" in ev:
                lo, hi = ev[f"heldout_loss_{k}_ci95"]
                put(f"held-out loss {k} (nats)", name, f"{ev[f'heldout_loss_{k}']:.3f} [{lo:.3f}, {hi:.3f}]")
                for order, x in ref.items() if k == "speech" else ():
                    for n in reports:  # also in the columns of variants not evaluated yet
                        put(f"held-out loss speech of a count {order} of the training codes (nats)", n, f"{x:.3f}")
        suite = ev.get("suite")
        for r in suite.get("results", []) if isinstance(suite, dict) else []:
            if "value" in r:
                lo, hi = r.get("ci95", (float("nan"),) * 2)
                put(f"{r['task']} {r['direction']} {r['metric']} (n={r['n']})", name,
                    f"{r['value']:.1f} [{lo:.1f}, {hi:.1f}]")
    names = list(reports)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {label} | " + " | ".join(v.get(n, "-") for n in names) + " |" for label, v in rows.items()]
    table = "\n".join(lines) + "\n"
    write_atomic(Path(run) / "ablation.md", table)
    return table


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


