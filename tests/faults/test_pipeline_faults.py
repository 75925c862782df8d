"""Pipeline faults (issue #41, item 6): a text stage killed after its tokenizer was trained and a part
finished resumes at part granularity without retraining the tokenizer (finished parts keep the
vocabulary they were written in), the killed run's temp files are removed, and a garbled stage.json
is named in a warning and treated as not finished instead of a bare JSONDecodeError."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from megaspeech.pipeline import runner
from megaspeech.pipeline.stages import Ctx
from tests.helpers.fault_runs import REPO

DEAD = 999999999  # above any pid_max: no process has it


def _pipeline(cfg: Path, run: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/pipeline.py", "--config", str(cfg), f"run.dir={run}",
                           "--until", "text"], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_text_stage_resumes_by_part_and_keeps_its_tokenizer(tmp_path):
    d = yaml.safe_load((REPO / "configs/pipeline/smoke.yaml").read_text())
    d["text"]["overrides"] = ["corpora=[kjv]", "tokenizer.vocab_size=400", "tokenizer.input_sentence_size=20000",
                              "text.max_tokens=6000", "text.max_tokens_per_sample=256", "text.parts=2"]
    cfg, run = tmp_path / "p.yaml", tmp_path / "run"
    cfg.write_text(yaml.safe_dump(d))
    p = _pipeline(cfg, run)
    assert p.returncode == 0, p.stderr[-3000:]
    text, tok, shards = run / "text", run / "text" / "tokenizer", run / "text" / "shards"
    # the state a SIGKILL during part 1 leaves: tokenizer trained, part 0 finished, part 1 and the
    # dataset manifest not written, temp files of the writers that died, no stage.json
    for f in ("stage.json", "shards/manifest.json", "shards/part-00001.manifest.json"):
        (text / f).unlink()
    temps = [shards / f".part-00001-000000.tar.tmp{DEAD}", shards / f".vocab.json.tmp{DEAD}",
             tok / f".tokenizer.model.tmp{DEAD}"]
    for t in temps:
        t.write_bytes(b"partial")
    user_file = shards / "notes.tmp123"  # not the tools' temp-name pattern: never touched
    user_file.write_text("mine")
    model, part0 = tok / "tokenizer.model", shards / "part-00000-000000.tar"
    before = {f: (f.stat().st_ino, f.read_bytes()) for f in (model, part0)}
    p = _pipeline(cfg, run)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resume" in p.stdout
    for f, (ino, data) in before.items():  # not retrained, not rewritten
        assert (f.stat().st_ino, f.read_bytes()) == (ino, data), f"{f} was rewritten on resume"
    assert not [t for t in temps if t.exists()], "temp files of the killed run are left"
    assert user_file.read_text() == "mine"
    m = json.loads((shards / "manifest.json").read_text())
    assert [s["name"] for s in m["shards"]] == ["part-00000-000000.tar", "part-00001-000000.tar"]
    assert json.loads((shards / "vocab.json").read_text())["text_size"] == 400


def _fake_stage(monkeypatch, calls: list):
    def configure(ctx):
        return {"x": 1}, {}

    def execute(ctx, cfg, extra):
        calls.append(1)
        return {"outputs": {}, "metrics": {"n": len(calls)}}
    monkeypatch.setitem(runner.STAGE_FUNCS, "text", (configure, execute, []))


def test_a_garbled_stage_marker_is_named_and_redone(tmp_path, monkeypatch):
    calls, said = [], []
    _fake_stage(monkeypatch, calls)
    ctx, d = Ctx(cfg=None, run=tmp_path), tmp_path / "text"
    runner._run_stage(ctx, "text", d, "[1/1 text]", False, said.append)
    assert calls == [1]
    runner._run_stage(ctx, "text", d, "[1/1 text]", False, said.append)
    assert calls == [1]  # done, skipped
    (d / "stage.json").write_text('{"stage": "text", "hash": "ab')  # torn / garbled marker
    said.clear()
    runner._run_stage(ctx, "text", d, "[1/1 text]", False, said.append)
    assert calls == [1, 1]  # treated as not finished: run again (resumed: started.json is intact)
    assert any(str(d / "stage.json") in line and "damaged" in line for line in said), said
    assert json.loads((d / "stage.json").read_text())["stage"] == "text"
    # both markers garbled: nothing tells which inputs made the outputs, so the stage restarts whole
    (d / "stage.json").write_text("\x00\x00")
    (d / "started.json").write_text("{")
    (d / "leftover.txt").write_text("from the run before")
    said.clear()
    runner._run_stage(ctx, "text", d, "[1/1 text]", False, said.append)
    assert calls == [1, 1, 1] and not (d / "leftover.txt").exists()
    assert any(str(d / "started.json") in line for line in said), said
