"""Two pipeline invocations on one run dir (a variant started beside the recipe) take turns on a
stage instead of wiping each other's outputs; a killed holder releases its stage."""
import subprocess
import sys
import threading
import time

from megaspeech.pipeline.runner import _stage_lock


def test_second_invocation_waits_for_the_stage_holder(tmp_path):
    events, held = [], threading.Event()

    def holder():
        with _stage_lock(tmp_path, "interleaved", lambda: events.append("holder waited")):
            held.set()
            time.sleep(0.5)
            events.append("holder done")
    t = threading.Thread(target=holder)
    t.start()
    held.wait()
    with _stage_lock(tmp_path, "pretrain-no_interleaved", lambda: events.append("other stage waited")):
        events.append("other stage runs")
    with _stage_lock(tmp_path, "interleaved", lambda: events.append("second waits")):
        events.append("second runs")
    t.join()
    assert events == ["other stage runs", "second waits", "holder done", "second runs"]


def test_a_killed_holder_releases_the_stage(tmp_path):
    code = ("import sys, time; from pathlib import Path; from megaspeech.pipeline.runner import _stage_lock\n"
            "with _stage_lock(Path(sys.argv[1]), 'eval', lambda: None):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        waited, acquired = [], threading.Event()

        def take():
            with _stage_lock(tmp_path, "eval", lambda: waited.append(1)):
                acquired.set()
        t = threading.Thread(target=take)
        t.start()
        assert not acquired.wait(1.0) and waited == [1]  # blocked while the holder lives
        p.kill()
        assert acquired.wait(10)  # taken once the holder died
        t.join()
    finally:
        p.kill()
        p.wait()
