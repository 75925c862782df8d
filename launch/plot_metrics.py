"""Loss curves per modality and throughput of a run, from RUN_DIR/metrics.jsonl to RUN_DIR/metrics.png.

    python launch/plot_metrics.py RUN_DIR [--out FILE]
    python launch/plot_metrics.py --config configs/tiny.yaml [run.dir=/tmp/r ...]   # uses run.dir

Top panel: loss, loss_text, loss_speech (and any other loss_* key) against step, log-scaled when
the loss spans more than a factor of 10, with the held-out val_loss, val_loss_text, val_loss_speech
(logged every eval.interval steps) as dashed lines with markers beside them. Bottom panel: tokens_per_s, with MFU on a second axis
when logged. A step logged twice (a run resumed from an earlier checkpoint) keeps its last record.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from megaspeech.fs import atomic_path


VAL_COLORS = {"val_loss": "tab:brown", "val_loss_text": "tab:cyan", "val_loss_speech": "tab:olive"}


def read_metrics(path: Path) -> list[dict]:
    """Records of a metrics.jsonl, one per step (the last one when a step repeats), sorted by step."""
    if not path.is_file():
        raise SystemExit(f"plot_metrics: {path} does not exist; pass the run dir a training run wrote "
                         f"(it holds metrics.jsonl)")
    by_step, lines = {}, path.read_text().splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            by_step[int(rec["step"])] = rec
        except (ValueError, KeyError, TypeError) as e:
            if n == len(lines):  # a line cut by a killed run: skip it
                print(f"plot_metrics: skipping truncated last line {n} of {path}", file=sys.stderr)
                continue
            raise SystemExit(f"plot_metrics: {path} line {n} is not a JSON object with a 'step' ({e}); "
                             f"fix or delete that line") from None
    if not by_step:
        raise SystemExit(f"plot_metrics: {path} has no records yet; wait for the first logged step")
    return [by_step[s] for s in sorted(by_step)]


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    def num(v):
        return float(v) if isinstance(v, (int, float)) else math.nan  # null: no token of that modality

    return [r["step"] for r in records], [num(r.get(key)) for r in records]


def plot(records: list[dict], out: Path, title: str = "") -> Path:
    """Draw both panels into `out` (PNG), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss_keys = ["loss"] + sorted({k for r in records for k in r if k.startswith("loss_")})
    fig, (ax_loss, ax_tps) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, constrained_layout=True)
    finite = []
    for k in loss_keys:
        steps, ys = _series(records, k)
        if any(not math.isnan(y) for y in ys):
            ax_loss.plot(steps, ys, label=k, linewidth=1.2, marker="." if len(steps) < 50 else None)
            finite += [y for y in ys if math.isfinite(y) and y > 0]
    for k in sorted({k for r in records for k in r if k.startswith("val_loss")}):
        pts = [(s, y) for s, y in zip(*_series(records, k)) if not math.isnan(y)]  # logged every eval.interval
        if pts:
            ax_loss.plot([s for s, _ in pts], [y for _, y in pts], label=k, linewidth=1.2, linestyle="--", marker="o",
                         color=VAL_COLORS.get(k))
            finite += [y for _, y in pts if math.isfinite(y) and y > 0]
    if finite and max(finite) / min(finite) > 10:
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss (nats/token)")
    ax_loss.legend(loc="upper right")
    ax_loss.grid(alpha=0.3)
    ax_loss.set_title(title or "training loss per modality")

    steps, tps = _series(records, "tokens_per_s")
    ax_tps.plot(steps, tps, color="tab:red", label="tokens/s")
    ax_tps.set_ylabel("tokens/s")
    ax_tps.set_xlabel("step")
    ax_tps.grid(alpha=0.3)
    if any("mfu" in r for r in records):
        ax_mfu = ax_tps.twinx()
        s, mfu = _series(records, "mfu")
        ax_mfu.plot(s, [100 * m for m in mfu], color="tab:purple", linestyle="--", label="MFU %")
        ax_mfu.set_ylabel("MFU (%)")
        ax_mfu.legend(loc="lower right")
    ax_tps.legend(loc="lower left")

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", help="run directory holding metrics.jsonl")
    p.add_argument("--config", help="a training config: its run.dir is plotted")
    p.add_argument("--out", help="output PNG (default RUN_DIR/metrics.png)")
    p.add_argument("overrides", nargs="*", help="dotted overrides for --config, e.g. run.dir=/tmp/r")
    args = p.parse_args(argv)
    if args.config:
        from megaspeech.config.load import ConfigError, load_config
        from megaspeech.config.schema import PretrainConfig

        overrides = ([args.run_dir] if args.run_dir and "=" in args.run_dir else []) + args.overrides
        try:
            run_dir = Path(load_config(PretrainConfig, args.config, overrides).run.dir)
        except ConfigError as e:
            p.exit(2, f"config error: {e}\n")
    elif args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        p.error("pass RUN_DIR or --config FILE")
    records = read_metrics(run_dir / "metrics.jsonl")
    out = plot(records, Path(args.out) if args.out else run_dir / "metrics.png", title=str(run_dir))
    print(f"wrote {out} ({len(records)} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
