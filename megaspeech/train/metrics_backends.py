"""Mirrors of metrics.jsonl: Weights & Biases and TensorBoard, behind one small interface.

    backends = make_backends(cfg.metrics, run_dir, to_dict(cfg))   # rank 0 only
    for b in backends: b.log(step, {"loss": 2.31, "loss_text": 2.1, "tokens_per_s": 5.1e4})
    for b in backends: b.close()

The metrics module writes metrics.jsonl itself and forwards the same dict here. Nested dicts
(e.g. consumed tokens per source) are flattened to "a/b" keys; non-numeric values are dropped
(they stay in metrics.jsonl). wandb never blocks training: `online` is tried with a timeout and
falls back to `offline` (a run dir under RUN_DIR/wandb that `wandb sync` uploads later) when the
service is unreachable or no API key is configured.
"""
from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

WANDB_INIT_TIMEOUT_S = 30.0


class Backend(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def _scalars(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Flatten nested dicts to 'a/b' keys; keep numbers (bools as 0/1, NaN/inf as they are)."""
    out = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_scalars(v, key + "/"))
        elif isinstance(v, (int, float)):
            out[key] = float(v)
        elif hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # 0-d tensor / numpy scalar
            out[key] = float(v.item())
    return out


class WandbBackend:
    """One wandb run in RUN_DIR/wandb. `mode`: offline | online (falls back to offline)."""

    def __init__(self, mode: str, run_dir: str | Path, project: str, name: str | None, config: dict,
                 timeout_s: float = WANDB_INIT_TIMEOUT_S):
        import wandb

        self._wandb = wandb
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        kw = dict(project=project, name=name, dir=str(run_dir), config=config)
        settings = wandb.Settings(init_timeout=timeout_s, console="off", x_disable_stats=True, silent=True)
        if mode == "online":
            try:
                self.run = wandb.init(mode="online", settings=settings, **kw)
                self.mode = "online"
                return
            except Exception as e:  # unreachable host, no API key, timeout: keep training, log locally
                log.warning("wandb online init failed (%s: %s); logging offline to %s/wandb, upload later "
                            "with `wandb sync`", type(e).__name__, e, run_dir)
        self.run = wandb.init(mode="offline", settings=settings, **kw)
        self.mode = "offline"

    @property
    def run_path(self) -> Path:
        """The run's own directory (RUN_DIR/wandb/<offline-|>run-<time>-<id>)."""
        return Path(self.run.dir).parent

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(_scalars(metrics), step=int(step))

    def close(self) -> None:
        self.run.finish()
        # finish() can return before the wandb service has written the run's transaction log (seen
        # with wandb 0.31: the first run of a process had only its header on disk); shutting the
        # service down flushes it, so the run dir is complete when the process exits or is killed.
        self._wandb.teardown()


class TensorBoardBackend:
    """Scalars into RUN_DIR/tensorboard (torch.utils.tensorboard event files)."""

    def __init__(self, run_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in _scalars(metrics).items():
            self.writer.add_scalar(k, v, global_step=int(step))
        self.writer.flush()  # a crash loses at most the current step

    def close(self) -> None:
        self.writer.close()


def make_backends(cfg_metrics, run_dir: str | Path, config_dict: dict) -> list[Backend]:
    """Backends named by `cfg_metrics` (megaspeech.config.schema.MetricsConfig: wandb mode,
    tensorboard flag, project). Call on rank 0 only. `config_dict` is stored with the wandb run."""
    out: list[Backend] = []
    if cfg_metrics.wandb != "disabled":
        name = (config_dict.get("run") or {}).get("name") if isinstance(config_dict, dict) else None
        out.append(WandbBackend(cfg_metrics.wandb, run_dir, cfg_metrics.project, name, config_dict))
    if cfg_metrics.tensorboard:
        out.append(TensorBoardBackend(run_dir))
    return out


# ---------------------------------------------------------------------------------- reading back
def _wandb_records(path: Path):
    """Records of a .wandb transaction log (LevelDB log framing: 32 KiB blocks, 7-byte headers)."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb transaction log (bad magic {data[:4]!r})")
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:  # FULL
            yield chunk
        elif kind == 2:  # FIRST
            pending = chunk
        elif kind == 3:  # MIDDLE
            pending += chunk
        elif kind == 4:  # LAST
            yield pending + chunk


def read_wandb_history(run_path: str | Path) -> list[dict]:
    """The logged history rows ({"_step": n, key: value}) of an offline wandb run directory."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_path).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_path}")
    rows = []
    for raw in _wandb_records(files[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") != "history":
            continue
        row = {"_step": rec.history.step.num}
        for item in rec.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows


def read_tensorboard_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from the event files in `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


__all__ = ["Backend", "WandbBackend", "TensorBoardBackend", "make_backends", "read_wandb_history",
           "read_tensorboard_scalars"]
