"""Every number a user sees: metrics.jsonl (rank 0), mirrored to wandb / TensorBoard backends."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from megaspeech.fs import file_lock, write_atomic

H100_BF16_TFLOPS = 989.0


def _gemm_tflops(trials: int, n: int = 1024) -> float:
    """Best fp32 GEMM rate of `trials` short trials: a busy machine only ever makes a trial slower."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        best = max(best, 2 * n**3 * 3 / (time.perf_counter() - t0) / 1e12)
    return best


def _read_table(cache: Path) -> dict:
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}


def measure_cpu_peak_tflops() -> float:
    """fp32 GEMM peak of this process's threads, cached per CPU/threads as the best ever measured.

    An underestimated peak inflates MFU, and a peak measured while other jobs load the CPU is low:
    so every process measures again (2 trials when cached, 6 the first time) and the cache keeps the
    maximum, which only ever moves toward the idle machine's rate. The read-compare-write runs under
    an flock on cpu_peak.json.lock, so processes measuring at once lose none of each other's keys."""
    cache = Path(os.environ.get("MEGASPEECH_CACHE", Path.home() / ".cache" / "megaspeech")) / "cpu_peak.json"
    key = f"{platform.processor() or platform.machine()}-{os.cpu_count()}-{torch.get_num_threads()}"
    measured = _gemm_tflops(2 if key in _read_table(cache) else 6)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(cache.with_name(cache.name + ".lock")):
        table = _read_table(cache)  # as of now: another process may have written since we measured
        if key not in table or measured > table[key]:
            table[key] = measured
            write_atomic(cache, json.dumps(table))
    return table[key]


def peak_tflops(configured: float | None) -> float:
    if configured:
        return configured
    return H100_BF16_TFLOPS if torch.cuda.is_available() else measure_cpu_peak_tflops()


class MetricsLogger:
    """Appends one JSON object per logged step to RUN_DIR/metrics.jsonl (rank 0 only)."""

    def __init__(self, run_dir: str | Path, enabled: bool, backends=()):
        self.enabled, self.backends = enabled, list(backends)
        self.path = Path(run_dir) / "metrics.jsonl"
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a") if enabled else None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        for b in self.backends:
            b.log(record["step"], {k: v for k, v in record.items() if isinstance(v, (int, float))})

    def close(self) -> None:
        if self._f:
            self._f.close()
        for b in self.backends:
            b.close()
