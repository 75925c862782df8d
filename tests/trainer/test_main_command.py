"""Acceptance 4: the README's main command trains the tiny config on 2 CPU ranks."""
import math

from tests.trainer.launch_util import read_metrics, run_pretrain

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
