"""Acceptance 2: a TP=2 model gathers to exactly the single-process model at init."""
import os
import subprocess
import sys

from tests.helpers.launch import ROOT, free_port


def test_tp2_gathers_to_single_process_weights():
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "tests/helpers/init_gather_worker.py"]
    p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "differing: []" in p.stdout
