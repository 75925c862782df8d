"""Run the recipe's stages in order with completion markers (the resume rule of launch/pipeline.py).

For each stage the inputs hash covers its resolved tool config, the links the pipeline adds and the
hashes of the stages it reads. Then:
  RUN/<stage>/stage.json with the same hash  -> skipped (done, inputs unchanged)
  stage.json with another hash               -> redone from scratch (its inputs changed)
  started.json with the same hash, no marker -> resumed: the tools skip finished parts and the
                                                trainers continue from their latest checkpoint
  started.json with another hash             -> its partial outputs are removed, then it runs
  a damaged (garbled) marker                  -> a warning names it; the stage counts as not finished
                                                (both markers damaged: restarted whole)
On resume the killed writers' temp files (`.NAME.tmpPID`, pid dead) are removed from the stage dir.
A stage whose tool trains a model keeps it as part of its finished state (the text stage reuses its
trained SentencePiece model), so finished parts never change vocabulary under a resume.
`--from STAGE` redoes STAGE and every later stage (earlier ones must be done); `--until STAGE` stops
after it. A stage dir is only ever removed when it holds the pipeline's own started.json/stage.json.
Each stage logs to RUN/<stage>/log.txt (its tools' output, subprocesses included); the console gets
one line per stage event and training progress (step, ETA). RUN/report.json + report.md gather the
markers' metrics and times after every invocation.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from megaspeech.fs import file_lock, remove_stale_temps, write_atomic
from megaspeech.config.pipeline import PipelineConfig
from megaspeech.pipeline.layout import STAGES
from megaspeech.pipeline.summary import write_report
from megaspeech.pipeline.progress import fmt
from megaspeech.pipeline.context import Ctx, as_dict
from megaspeech.pipeline.stages import STAGE_FUNCS

RUN_STAGES = [s for s in STAGES if s != "report"]


class PipelineError(RuntimeError):
    pass


def _read(path: Path, say=None) -> dict | None:
    """A marker as a dict; None when missing, or when damaged (garbled JSON, not an object): then a
    warning names the file and the stage counts as not finished."""
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        obj, why = None, f"not valid JSON ({e})"
    else:
        why = None if isinstance(obj, dict) and isinstance(obj.get("hash"), str) else "not a pipeline marker"
    if why is None:
        return obj
    msg = f"warning: {path} is damaged ({why}); the stage is treated as not finished"
    logging.getLogger(__name__).warning(msg)
    if say is not None:
        say(msg)
    return None


def _write(path: Path, obj: dict) -> None:
    write_atomic(path, json.dumps(obj, indent=1, default=str))


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _wipe(d: Path) -> None:
    if not d.exists():
        return
    if not ((d / "started.json").exists() or (d / "stage.json").exists()):
        raise PipelineError(f"{d} exists but was not written by the pipeline (no started.json/stage.json): "
                            f"move it away or choose another run.dir")
    shutil.rmtree(d)


def _remove_temps(d: Path, say) -> None:
    """The `.NAME.tmpPID` files the interrupted run's writers left anywhere in the stage dir (their pid
    is dead; the stage lock is held, so no live writer of this stage is running)."""
    gone = [p for sub, _, _ in os.walk(d) for p in remove_stale_temps(sub)]
    if gone:
        say(f"removed {len(gone)} temp files of the interrupted run: " + ", ".join(str(p) for p in gone[:5])
            + (" ..." if len(gone) > 5 else ""))


@contextlib.contextmanager
def _stage_lock(run: Path, name: str, on_wait):
    """Hold RUN/.locks/<name>.lock (flock, released when the process dies) while a stage is
    checked and run, so two invocations on one run dir never wipe or write the same stage."""
    path = run / ".locks" / f"{name}.lock"
    path.parent.mkdir(exist_ok=True)
    with file_lock(path, on_wait):
        yield


@contextlib.contextmanager
def _stage_log(path: Path):
    """Send print/logging/subprocess output of a stage to its log file (fd-level, so child
    processes and C libraries land there too); the console keeps only the pipeline's own lines."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    f = open(path, "a", buffering=1)
    os.dup2(f.fileno(), 1)
    os.dup2(f.fileno(), 2)
    root = logging.getLogger()
    handler = logging.StreamHandler(f)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        root.removeHandler(handler)
        root.setLevel(old_level)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        f.close()


def _run_stage(ctx: Ctx, stage: str, d: Path, tag: str, forced: bool, say) -> None:
    """Skip, resume, redo or run one stage by its marker (the module docstring's rule); forced: --from."""
    configure, execute, needs = STAGE_FUNCS[stage]
    missing = [u for u in needs if u not in ctx.done]
    if missing:
        raise PipelineError(f"{stage} needs {missing} done first")
    cfg_obj, extra = configure(ctx)
    # a stage that does not read an upstream output this time (extra["unread"]: pre-training
    # without interleaved data) is not redone when that upstream stage changes
    spec = {"config": _jsonable(cfg_obj), "extra": extra,
            "upstream": {u: ctx.done[u]["hash"] for u in needs if u not in extra.get("unread", ())}}
    h = _hash(spec)
    marker, started = _read(d / "stage.json", say), _read(d / "started.json", say)
    if marker is None and started is None and ((d / "stage.json").exists() or (d / "started.json").exists()):
        # damaged markers: nothing tells which inputs made what is there, so the stage restarts whole
        say(f"{tag} restart: its markers are damaged")
        _wipe(d)
    if marker is not None and marker.get("hash") == h and not forced:
        ctx.done[stage] = marker
        say(f"{tag} skip: done, inputs unchanged ({marker['seconds']:.0f}s when run)")
        return
    if marker is not None or forced:
        say(f"{tag} redo: " + ("--from" if marker is None or marker.get("hash") == h else "inputs changed"))
        _wipe(d)
    elif started is not None and started.get("hash") != h:
        say(f"{tag} restart: an interrupted run had other inputs")
        _wipe(d)
    elif started is not None:
        say(f"{tag} resume: an interrupted run with the same inputs")
        _remove_temps(d, say)
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "started.json").exists():
        _write(d / "started.json", {"hash": h, "started_at": time.time()})
    say(f"{tag} start (log: {d / 'log.txt'})")
    t0 = time.time()
    with _stage_log(d / "log.txt"):
        try:
            result = execute(ctx, cfg_obj, extra)
        except Exception:
            traceback.print_exc()
            raise
        print(f"stage {stage} finished: {json.dumps(result, default=str)}", flush=True)
    secs = time.time() - t0
    marker = {"stage": stage, "hash": h, "upstream": spec["upstream"], "config": spec["config"],
              "outputs": result["outputs"], "metrics": result["metrics"], "seconds": secs,
              "finished_at": time.time()}
    _write(d / "stage.json", marker)
    ctx.done[stage] = marker
    say(f"{tag} done in {fmt(secs)}: " + _short(result["metrics"]))


def run_pipeline(cfg: PipelineConfig, start: str | None = None, until: str | None = None,
                 console=None) -> dict:
    """Run (or skip / resume / redo) the stages between `start` and `until`; returns the report."""
    out = os.fdopen(os.dup(1), "w", buffering=1)  # the console, even while a stage owns fd 1

    def say(line: str):
        (console or out.write)(line + "\n")
    for name, v in (("--from", start), ("--until", until)):
        if v is not None and v not in RUN_STAGES:
            raise PipelineError(f"{name} {v}: unknown stage; stages are {', '.join(RUN_STAGES)}")
    run = Path(cfg.run.dir).expanduser().resolve()
    run.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(cfg, run, progress=say)
    i0 = RUN_STAGES.index(start) if start else 0
    i1 = RUN_STAGES.index(until) if until else len(RUN_STAGES) - 1
    n = len(RUN_STAGES)
    t_all = time.time()
    try:
        for i, stage in enumerate(RUN_STAGES[:i1 + 1]):
            d = ctx.dir(stage)
            tag = f"[{i + 1}/{n} {stage}]"
            if i < i0:
                marker = _read(d / "stage.json", say)
                if marker is None:
                    raise PipelineError(f"--from {start}: earlier stage {stage} is not done ({d / 'stage.json'} "
                                        f"missing); run without --from first")
                ctx.done[stage] = marker
                continue
            # another invocation on this run dir (a variant started beside the recipe) may be
            # running this stage: wait for it, then its marker decides skip / redo as usual
            with _stage_lock(run, d.name, lambda: say(f"{tag} waiting: another pipeline process "
                                                       f"on {run} is running this stage")):
                _run_stage(ctx, stage, d, tag, bool(start), say)  # past --from's stage
    except Exception as e:
        say(f"pipeline stopped: {type(e).__name__}: {e}")
        write_report(run, ctx.done, cfg, cfg.run.variant)  # what is done so far
        out.close()
        raise
    report = write_report(run, ctx.done, cfg, cfg.run.variant)
    name = f"report-{cfg.run.variant}.md" if cfg.run.variant else "report.md"
    say(f"report: {run / name} ({fmt(time.time() - t_all)} this invocation)")
    out.close()
    return report


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "__dataclass_fields__"):
        return as_dict(obj)
    return obj


def _short(metrics: dict) -> str:
    items = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
             if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    return " ".join(items[:8])
