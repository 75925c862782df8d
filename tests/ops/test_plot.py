"""launch/plot_metrics.py: a run dir's metrics.jsonl becomes a PNG with every curve drawn."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("plot_metrics", ROOT / "launch/plot_metrics.py")
plot_metrics = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_metrics)

TAB = {"C0": (0x1F, 0x77, 0xB4), "C1": (0xFF, 0x7F, 0x0E), "C2": (0x2C, 0xA0, 0x2C), "red": (0xD6, 0x27, 0x28), "purple": (0x94, 0x67, 0xBD)}


def write_run(run_dir: Path, steps=40):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for s in range(1, steps + 1):
            rec = {"step": s, "loss": 9 * math.exp(-s / 10) + 1, "loss_text": 8 * math.exp(-s / 12) + 1,
                   "loss_speech": (10 * math.exp(-s / 8) + 1.5) if s % 5 else None,  # a batch without speech
                   "lr": 1e-3, "tokens_per_s": 2000 + 30 * math.sin(s), "mfu": 0.3}
            f.write(json.dumps(rec) + "\n")
        f.write(json.dumps({"step": steps, "loss": 1.0, "loss_text": 1.0, "loss_speech": 1.5,
                            "tokens_per_s": 2000, "mfu": 0.3}) + "\n")  # resumed: the last record wins
        f.write('{"step": 41, "loss": 1.')  # cut by a kill


def pixels_of(img: np.ndarray, rgb) -> int:
    return int((np.abs(img[..., :3] * 255 - np.array(rgb)).max(axis=-1) < 30).sum())


def test_plot_png_has_every_curve(tmp_path):
    run = tmp_path / "run"
    write_run(run)
    assert plot_metrics.main([str(run)]) == 0
    png = run / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.shape[0] > 500 and img.shape[1] > 700
    # loss (C0), loss_speech (C1), loss_text (C2), tokens/s (red), MFU (purple): each line is drawn.
    for name, rgb in TAB.items():
        assert pixels_of(img, rgb) > 200, name
    records = plot_metrics.read_metrics(run / "metrics.jsonl")
    assert len(records) == 40 and records[-1]["loss"] == 1.0
    assert not list(run.glob(".*tmp*"))  # atomic write left nothing behind


def test_config_style_and_bad_input(tmp_path):
    run = tmp_path / "r2"
    write_run(run, steps=5)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run:\n  dir: /nonexistent\ndata:\n  kind: synthetic\n")  # a config must name its data
    assert plot_metrics.main(["--config", str(cfg), f"run.dir={run}", "--out", str(tmp_path / "o.png")]) == 0
    assert (tmp_path / "o.png").stat().st_size > 10_000
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:2] + ["not json"] + lines[2:]) + "\n")
    with pytest.raises(SystemExit, match=r"metrics.jsonl line 3 .*fix or delete"):
        plot_metrics.main([str(run)])
    with pytest.raises(SystemExit, match="does not exist"):
        plot_metrics.main([str(tmp_path / "missing")])
