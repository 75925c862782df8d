"""Document masking under tensor and pipeline parallelism (2 gloo ranks, tests/helpers/doc_mask_worker.py):
the logits of a packed row with the document mask equal those of each document run alone (TP=1:
tests/model/test_attention.py), and without the mask they differ (Megatron-LM#2357: packed documents silently attend to each other)."""
import os
import subprocess
import sys

import pytest

from tests.helpers.launch import ROOT, free_port


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)])
def test_packed_logits_equal_documents_alone(tp, pp):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "tests/helpers/doc_mask_worker.py", str(tp), str(pp)]
    p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for attn in ("sdpa", "flex"):  # the CPU path (dense mask) and the CUDA one (FlexAttention BlockMask)
        assert f"attention={attn} rank=" in p.stdout and "docs=8" in p.stdout, p.stdout[-2000:]


def test_pipeline_trains_with_document_mask_like_one_process(tmp_path):
    """Training (forward, backward, step) through DeepSpeed's pipeline with doc_ids in the stage inputs
    gives the single-process losses."""
    from tests.helpers.launch import losses, run_pretrain
    common = ["data.kind=synthetic", "data.document_mask=true", "train.steps=3", "train.global_batch=4",
              "train.micro_batch=2", "train.seq_len=64", "checkpoint.save_at_end=false", "parallel.zero_stage=1"]
    run_pretrain(1, tmp_path / "one", common)
    run_pretrain(2, tmp_path / "pp2", common + ["parallel.pipeline=2"])
    ref, got = losses(tmp_path / "one"), losses(tmp_path / "pp2")
    assert len(got) == len(ref) == 3
    for a, b in zip(got, ref):
        assert abs(a - b) <= 1e-5 * abs(b)
