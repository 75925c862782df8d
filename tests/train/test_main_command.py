"""Acceptance 4: the README's main command trains the tiny config on 2 CPU ranks."""
import math

from tests.helpers.launch import read_metrics, run_pretrain

FIELDS = ("step", "loss", "loss_text", "loss_speech", "lr", "grad_norm", "tokens_per_s", "mfu", "consumed_samples")


def test_deepspeed_launcher_tiny_30_steps(tmp_path):
    proc = run_pretrain(2, tmp_path, ["train.steps=30"], launcher="deepspeed")
    assert proc.returncode == 0
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 31))
    for r in rows:
        for k in FIELDS:
            assert k in r, f"metrics.jsonl row {r['step']} lacks {k}"
        assert math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1
    assert rows[-1]["consumed_samples"] == 30 * rows[0]["consumed_samples"]
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < first - 0.25, f"loss did not fall: {first:.3f} -> {last:.3f}"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step00000030"

    # The same series reaches the metric backends (offline wandb, TensorBoard) and the plot.
    from megaspeech.train.metrics_backends import read_tensorboard_scalars, read_wandb_history
    tb = read_tensorboard_scalars(tmp_path / "tensorboard")
    assert [s for s, _ in tb["loss"]] == list(range(1, 31))
    assert all(abs(v - r["loss"]) <= 1e-5 * r["loss"] for (_, v), r in zip(tb["loss"], rows))
    (run,) = [p for p in (tmp_path / "wandb").iterdir() if p.name.startswith("offline-run")]
    history = [h for h in read_wandb_history(run) if "loss" in h]
    assert [h["loss"] for h in history] == [r["loss"] for r in rows]
    import subprocess
    import sys
    from tests.helpers.launch import ROOT
    subprocess.run([sys.executable, "launch/plot_metrics.py", str(tmp_path)], cwd=ROOT, check=True, timeout=300)
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
