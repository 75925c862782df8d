"""task: bridge through launch/pretrain.py (DeepSpeed, gloo; each launch costs ~20-40 s of start-up, so
three launches serve all checks): exact resume of a bridge run, TP=2 equal to one process, and the
export of the run's checkpoint reproducing the trained model."""
import torch

from tests.helpers.launch import read_metrics, run_pretrain

CFG = "configs/bridge_tiny.yaml"


def test_bridge_run_resumes_exactly_tp2_matches_and_exports(asr_corpus, tmp_path):
    common = [f"bridge.train={asr_corpus}", "bridge.qa_fraction=0.3", "train.steps=4"]
    ref, resumed, tp2 = tmp_path / "ref", tmp_path / "resumed", tmp_path / "tp2"
    run_pretrain(1, ref, common + ["checkpoint.interval=2"], config=CFG)
    run_pretrain(1, resumed, common + [f"run.resume={ref}/checkpoints/step00000002"], config=CFG)
    run_pretrain(2, tp2, common + ["parallel.tensor=2", "checkpoint.save_at_end=false"], config=CFG)
    a, b, c = read_metrics(ref), read_metrics(resumed), read_metrics(tp2)
    assert [r["step"] for r in b] == [3, 4]
    for k in ("loss", "loss_ctc", "grad_norm", "rows_asr", "rows_qa"):  # exact: same bits, same rows read
        assert [r[k] for r in b] == [r[k] for r in a[2:]], k
    assert a[-1]["loss"] < a[0]["loss"] and a[-1]["loss_ctc"] < a[0]["loss_ctc"]
    assert a[-1]["rows_qa"] > 0
    for x, y in zip(a, c, strict=True):
        for k in ("loss", "loss_ctc", "grad_norm"):
            assert abs(x[k] - y[k]) <= 2e-5 * abs(x[k]), (k, x, y)

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from megaspeech.bridge.layer import splice
    from megaspeech.bridge.export import SINGLE, export_bridge, load_bridge
    from megaspeech.bridge.task import BridgeTask
    ckpt = ref / "checkpoints" / "step00000004"
    model, cfg = load_bridge(ckpt)
    out = export_bridge(ckpt, tmp_path / "export")
    front = load_file(out / "speech.safetensors")
    assert set(front) == {k for k in model.state_dict() if k.startswith(("encoder.", "bridge."))}
    hf = AutoModelForCausalLM.from_pretrained(out / "lm").eval()
    batch = BridgeTask(cfg, SINGLE).build_loader().next_batch()
    with torch.no_grad():
        sp, _, _ = model.speech(batch)
        embeds, total = splice(sp, model.embed_text(batch["text_ids"]), batch["text_lengths"])
        trained = model.lm(None, embeds=embeds)
        exported = hf(inputs_embeds=embeds.transpose(0, 1)).logits.transpose(0, 1)
    real = torch.arange(embeds.shape[0])[:, None] < total[None, :]
    torch.testing.assert_close(exported[real], trained[real], rtol=1e-4, atol=1e-4)
