"""launch/plot_metrics.py draws the held-out curves (val_loss, val_loss_text, val_loss_speech) that
the trainer logs every eval.interval steps, beside the training curves."""
import importlib.util
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("plot_metrics", ROOT / "launch/plot_metrics.py")
plot_metrics = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_metrics)

VAL = {"val_loss": (0x8C, 0x56, 0x4B), "val_loss_text": (0x17, 0xBE, 0xCF), "val_loss_speech": (0xBC, 0xBD, 0x22)}


def pixels(img, rgb) -> int:
    import numpy as np
    return int((np.abs(img[..., :3] * 255 - np.array(rgb)).max(axis=-1) < 30).sum())


def test_val_curves_drawn(tmp_path):
    import matplotlib.image as mpimg

    with open(tmp_path / "metrics.jsonl", "w") as f:
        for s in range(1, 41):
            rec = {"step": s, "loss": 8 * math.exp(-s / 10) + 1, "tokens_per_s": 1000.0}
            if s % 10 == 0:
                rec.update(val_loss=8 * math.exp(-s / 12) + 1.5, val_loss_text=8 * math.exp(-s / 12) + 1.2,
                           val_loss_speech=8 * math.exp(-s / 12) + 2.0)
            f.write(json.dumps(rec) + "\n")
    assert plot_metrics.main([str(tmp_path)]) == 0
    img = mpimg.imread(tmp_path / "metrics.png")
    for name, rgb in VAL.items():
        assert pixels(img, rgb) > 150, name
    # without val records those colours are absent: the count above comes from the val curves
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "loss": 2.0, "tokens_per_s": 1.0})
                                                      for s in range(1, 41)))
    plot_metrics.main([str(tmp_path)])
    img = mpimg.imread(tmp_path / "metrics.png")
    assert all(pixels(img, rgb) < 20 for rgb in VAL.values())
