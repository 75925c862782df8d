"""wandb (offline) and TensorBoard mirrors: the files land on disk and hold the logged series."""
import math

import pytest

from megaspeech.config.schema import MetricsConfig
from megaspeech.train.metrics_backends import (TensorBoardBackend, WandbBackend, make_backends,
                                               read_tensorboard_scalars, read_wandb_history)

STEPS = [{"loss": 5.0 / (s + 1), "loss_text": 4.0 / (s + 1), "loss_speech": 6.0 / (s + 2),
          "tokens_per_s": 1000.0 + 17 * s, "consumed_tokens": {"text": 256 * s, "speech": 128 * s}}
         for s in range(6)]


def test_wandb_offline_and_tensorboard_hold_the_series(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the config chooses the mode, not the environment
    backends = make_backends(MetricsConfig(wandb="offline", tensorboard=True), tmp_path,
                             {"run": {"name": "unit"}, "train": {"steps": 6}})
    assert [type(b) for b in backends] == [WandbBackend, TensorBoardBackend]
    for step, m in enumerate(STEPS, start=1):
        for b in backends:
            b.log(step, m)
    for b in backends:
        b.close()
    wb, tb = backends
    assert wb.mode == "offline" and wb.run_path.parent == tmp_path / "wandb"

    rows = read_wandb_history(wb.run_path)
    assert [r["_step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for r, m in zip(rows, STEPS):
        for k in ("loss", "loss_text", "loss_speech", "tokens_per_s"):
            assert r[k] == m[k]  # JSON keeps the float exactly
        assert r["consumed_tokens/speech"] == m["consumed_tokens"]["speech"]

    event_files = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(event_files) == 1 and event_files[0].stat().st_size > 0
    scalars = read_tensorboard_scalars(tb.log_dir)
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3, 4, 5, 6]
    for k in ("loss", "loss_text", "loss_speech", "tokens_per_s"):
        got = [v for _, v in scalars[k]]
        assert got == pytest.approx([m[k] for m in STEPS], rel=1e-6)  # float32 in event files
    assert [v for _, v in scalars["consumed_tokens/text"]] == [256.0 * s for s in range(6)]


def test_disabled_and_online_fallback(tmp_path, monkeypatch):
    assert make_backends(MetricsConfig(wandb="disabled", tensorboard=False), tmp_path, {}) == []
    assert not (tmp_path / "wandb").exists()
    # Online without an API key (or a reachable server) must not stop training: it logs offline.
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    wb = WandbBackend("online", tmp_path / "run", "p", None, {}, timeout_s=10)
    wb.log(1, {"loss": math.pi})
    wb.close()
    assert wb.mode == "offline"
    assert read_wandb_history(wb.run_path)[0]["loss"] == math.pi
