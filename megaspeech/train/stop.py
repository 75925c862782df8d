"""Stop requests for the trainer: SIGTERM, SIGINT, SIGUSR1, and the death of the launcher.

Each one sets `StopRequests.signal`; the trainer all-reduces it after every step, saves a checkpoint
and exits 0 (checkpoint-and-exit, for a requeue). A second SIGINT (an impatient Ctrl-C) raises
KeyboardInterrupt at once.

Why the launcher is watched: SIGTERM to `deepspeed` (the runner) kills the runner only; its child
`deepspeed.launcher.launch` and the training processes under it never hear of it and train on, orphaned.
torchrun, `deepspeed.launcher.launch`, srun and Slurm forward SIGTERM to the training processes, but a
launcher that dies by SIGKILL forwards nothing. So a small thread polls the launcher processes this one
runs under (the chain of ancestors whose command line is a known launcher: deepspeed's runner and
launch.py, torchrun / torch.distributed.run) and treats any of them ending as SIGTERM. A process
started directly (`python launch/pretrain.py`, under a shell or nohup) watches nothing: its shell
may exit while it trains on.
"""
from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

LAUNCHER_MODULES = ("deepspeed.launcher.launch", "deepspeed.launcher.runner", "torch.distributed.run",
                    "torch.distributed.launch")
LAUNCHER_COMMANDS = ("deepspeed", "torchrun")
POLL_S = 0.5


def is_launcher(argv: list[str]) -> bool:
    """`deepspeed ...`, `torchrun ...`, `python [-u] /path/deepspeed ...`, `python -m torch.distributed.run ...`"""
    words = [a for a in argv[:4] if a and a != "-u"]
    if not words:
        return False
    if os.path.basename(words[0]) in LAUNCHER_COMMANDS:
        return True
    if os.path.basename(words[0]).startswith("python") and len(words) > 1:
        if words[1] == "-m":
            return len(words) > 2 and words[2] in LAUNCHER_MODULES
        return os.path.basename(words[1]) in LAUNCHER_COMMANDS
    return False


def _proc(pid: int) -> tuple[int, str, list[str]] | None:
    """(parent pid, start time, argv) of a live process, from /proc; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().decode(errors="replace").split("\0")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid ... starttime (22nd field)
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), fields[19], argv


def launcher_chain(pid: int | None = None) -> list[tuple[int, str, str]]:
    """(pid, start time, command) of each launcher above `pid` (this process), nearest first."""
    chain = []
    me = _proc(os.getpid() if pid is None else pid)
    ppid = me[0] if me else 0
    while ppid > 1:
        info = _proc(ppid)
        if info is None or not is_launcher(info[2]):
            break
        chain.append((ppid, info[1], " ".join(info[2])))
        ppid = info[0]
    return chain


class StopRequests:
    def __init__(self):
        self.signal = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signal:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        self.signal = signum

    def install(self) -> None:
        """Signal handlers (main thread) and the launcher watch."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, self._handle)
        chain = launcher_chain()
        if chain and self._thread is None:
            self._thread = threading.Thread(target=self._watch, args=(chain,), daemon=True, name="launcher-watch")
            self._thread.start()

    def _watch(self, chain) -> None:
        while not self._done.wait(POLL_S):
            for pid, start, cmd in chain:
                now = _proc(pid)
                if now is None or now[1] != start:  # gone (or its pid reused)
                    log.warning("the launcher (pid %d: %s) has exited: stopping as on SIGTERM "
                                "(checkpoint, then exit)", pid, cmd[:120])
                    self.signal = self.signal or signal.SIGTERM
                    return

    def close(self) -> None:
        self._done.set()
