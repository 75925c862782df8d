"""Read the next optimizer steps' micro-batches in a background thread, off the training step's path.

Each item is one step's bundle: its `grad_accum` micro-batches (in pinned memory when the trainer
runs on CUDA, so the host-to-device copies can be non-blocking), the loader's `state_dict()` taken
right after them, its `stats()` then, and the step's local loss-token count (summed here on the
host, so the step never reads a device tensor for it). The trainer checkpoints the state of the
last bundle it *consumed*, never the loader's live state (which is up to `depth` steps ahead), so
resume stays exact: the batches read ahead but not trained on are read again after a restart.

One thread owns the loader while the prefetcher runs (the loader is not thread-safe); `close()`
stops it. An exception in the thread (including the end of a finite loader) is raised by `next()`.
"""
from __future__ import annotations

import copy
import queue
import threading
from dataclasses import dataclass, field

import torch


@dataclass
class StepData:
    batches: list[dict]
    state: dict | list  # loader.state_dict() after these batches
    stats: dict = field(default_factory=dict)  # loader.stats() after these batches (if it has stats)
    tokens: float = 0.0  # loss tokens of these batches (sum of loss_mask)


def read_step(it, loader, grad_accum: int, pin: bool) -> StepData:
    """One step's bundle from iterator `it` over `loader` (also the synchronous path, depth 0)."""
    batches = [next(it) for _ in range(grad_accum)]
    if pin:
        batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]
    tokens = float(sum(b["loss_mask"].sum(dtype=torch.float64) for b in batches))
    stats = copy.deepcopy(loader.stats()) if hasattr(loader, "stats") else {}
    return StepData(batches, copy.deepcopy(loader.state_dict()), stats, tokens)


class Prefetcher:
    """`next()` -> StepData; `depth` steps are read ahead by a daemon thread."""

    _END = object()

    def __init__(self, loader, grad_accum: int, depth: int, pin: bool):
        self.loader, self.grad_accum, self.pin = loader, grad_accum, pin
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="megaspeech-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        it = iter(self.loader)
        while not self._stop.is_set():
            try:
                item = read_step(it, self.loader, self.grad_accum, self.pin)
            except BaseException as e:  # handed to the consumer, raised there with its traceback
                item = e
            while not self._stop.is_set():
                try:
                    self._q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def next(self) -> StepData:
        while True:
            try:
                item = self._q.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._q.empty():
                    raise RuntimeError("the data prefetch thread stopped without a batch or an error")
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
