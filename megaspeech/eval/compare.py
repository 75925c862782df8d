"""A model's suite rows beside a baseline's on the same items (`baseline` of the suite config: the
untrained start model), with the difference and its 95% interval.

The difference's interval combines the two rows' own intervals by MOVER (Newcombe's method for a
difference of proportions, the same recovery of variances for any estimate with an interval: Wilson
for proportions, bootstrap for WER, ratio estimator for losses, normal for token F1):
    d = a - b,  lower = d - sqrt((a - a_lo)^2 + (b_hi - b)^2),  upper = d + sqrt((a_hi - a)^2 + (b - b_lo)^2)
It treats the two as independent; both are scored on the same items, so the interval is conservative
(wider than a paired one). A row that either side skipped is carried with its reason.
"""
from __future__ import annotations

import math


def difference(a: dict, b: dict) -> tuple[float, tuple[float, float]]:
    """(a - b, MOVER 95% interval) of two result rows with value and ci95."""
    (alo, ahi), (blo, bhi) = a["ci95"], b["ci95"]
    d = a["value"] - b["value"]
    lo = d - math.sqrt((a["value"] - alo) ** 2 + (bhi - b["value"]) ** 2)
    hi = d + math.sqrt((ahi - a["value"]) ** 2 + (b["value"] - blo) ** 2)
    return d, (lo, hi)


def compare_rows(rows: list[dict], base_rows: list[dict]) -> list[dict]:
    """One row per (task, direction, metric) of `rows`: model, baseline, difference (or why not)."""
    base = {(r["task"], r["direction"], r["metric"]): r for r in base_rows}
    out = []
    for r in rows:
        key = (r["task"], r["direction"], r["metric"])
        b = base.get(key)
        row = {"task": key[0], "direction": key[1], "metric": key[2], "model": _cell(r), "baseline": _cell(b)}
        ok = b is not None and "value" in r and "value" in b
        if ok and all(math.isfinite(x) for x in (*r.get("ci95", [math.nan]), *b.get("ci95", [math.nan]))):
            d, ci = difference(r, b)
            row.update(difference=d, difference_ci95=list(ci))
        elif ok:
            row["difference"] = r["value"] - b["value"]
        out.append(row)
    return out


def _cell(r: dict | None) -> str:
    if r is None:
        return "not run"
    if "value" not in r:
        return f"skipped: {r['skipped']}"
    lo, hi = r.get("ci95", (math.nan, math.nan))
    return f"{r['value']:.1f} [{lo:.1f}, {hi:.1f}]" if math.isfinite(lo) else f"{r['value']:.1f}"


def compare_markdown(rows: list[dict], model: str, baseline: str) -> str:
    """The comparison as a markdown table (value [95% interval])."""
    lines = [f"| task | direction | metric | {model} | {baseline} | difference |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        if "difference_ci95" in r:
            lo, hi = r["difference_ci95"]
            diff = f"{r['difference']:+.1f} [{lo:+.1f}, {hi:+.1f}]"
        else:
            diff = f"{r['difference']:+.1f}" if "difference" in r else ""
        lines.append(f"| {r['task']} | {r['direction']} | {r['metric']} | {r['model']} | {r['baseline']} | {diff} |")
    return "\n".join(lines)
