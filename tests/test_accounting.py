"""The accounting module (megaspeech/accounting.py) against hand calculations, Hugging Face models
of the same shape, and torchtitan's published Llama 3.1 8B H100 figures."""
import importlib.util
import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

from megaspeech import accounting as A
from megaspeech.config.load import ConfigError, build, load_config
from megaspeech.config.schema import PretrainConfig

ROOT = Path(__file__).resolve().parents[1]


def cfg_9b(**over):
    return load_config(PretrainConfig, ROOT / "configs/9b.yaml", [f"{k}={v}" for k, v in over.items()])


def tiny(family="glm", qkv_bias=True, tie=False):
    return build(PretrainConfig, {
        "vocab": {"text_size": 300, "speech_size": 200},  # + 8 specials = 508, padded to 512
        "data": {"kind": "synthetic"},
        "model": dict(family=family, num_layers=3, hidden_size=64, ffn_hidden_size=96, num_heads=4,
                      num_kv_heads=2, qkv_bias=qkv_bias, tie_embeddings=tie, rope_fraction=0.5)})


def llama3_8b():
    """torchtitan's Table 1 setup: Llama 3.1 8B, 8 GPUs, FSDP (ZeRO-3), bf16, seq 8192, local batch 2."""
    return build(PretrainConfig, {
        "vocab": {"text_size": 128256 - 8, "speech_size": 0},  # 128,256 rows with our 8 specials
        "model": dict(num_layers=32, hidden_size=4096, ffn_hidden_size=14336, num_heads=32, num_kv_heads=8),
        "parallel": {"zero_stage": 3}, "data": {"kind": "synthetic"},
        "train": dict(seq_len=8192, micro_batch=2, global_batch=16, precision="bf16")})


def padded_9b(cfg):
    """The 9B embedding rows: 151,552 text + 16,384 speech + 8 specials, padded (multiple of 128)."""
    V = cfg.padded_vocab_size()
    assert V % 128 == 0 and 167_944 <= V < 167_944 + 256
    return V


def hf_count(cfg, meta=False):
    import transformers as T
    m = cfg.model
    kw = dict(vocab_size=cfg.padded_vocab_size(), hidden_size=m.hidden_size, intermediate_size=m.ffn_hidden_size,
              num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
              head_dim=m.head_dim, tie_word_embeddings=m.tie_embeddings, pad_token_id=0)
    if m.family == "glm":  # GLM: q, k, v biases, no o_proj bias, fused gate_up
        cls, hf_cfg = T.GlmForCausalLM, T.GlmConfig(attention_bias=m.qkv_bias, partial_rotary_factor=m.rope_fraction, **kw)
    else:
        assert not m.qkv_bias  # Llama's attention_bias would also add an o_proj bias
        cls, hf_cfg = T.LlamaForCausalLM, T.LlamaConfig(attention_bias=False, **kw)
    with torch.device("meta" if meta else "cpu"):
        model = cls(hf_cfg)
    return sum(p.numel() for p in model.parameters())  # a tied weight is one parameter


def test_param_count_tiny_by_hand_and_hf():
    for family, bias, tie in (("glm", True, False), ("llama", False, False), ("llama", False, True)):
        cfg = tiny(family, bias, tie)
        V, H, F, L = 512, 64, 96, 3
        qkv = H * (4 + 2 * 2) * 16 + (128 if bias else 0)  # 4 heads + 2x2 kv heads of 16
        per_layer = 2 * H + qkv + H * H + 3 * H * F
        want = V * H + L * per_layer + H + (0 if tie else V * H)
        pc = A.param_counts(cfg)
        assert pc["per_layer"] == per_layer and pc["total"] == want
        assert hf_count(cfg) == want, (family, bias, tie)


def test_param_count_9b():
    cfg = cfg_9b()
    pc = A.param_counts(cfg)
    V = padded_9b(cfg)
    assert abs(pc["total"] / 9.54e9 - 1) < 0.01
    # GLM-4-9B (text vocab only) is 9.40B; the extra rows are speech codes, specials and padding.
    glm4 = pc["total"] - 2 * (V - 151552) * 4096
    assert abs(glm4 / 9.40e9 - 1) < 0.005
    assert hf_count(cfg, meta=True) == pc["total"]  # the HF GLM of the same shape, not allocated
    assert A.param_counts(llama3_8b())["total"] == 8_030_261_248  # Llama 3 8B's published count


def test_flops_per_token_9b_by_hand():
    V = padded_9b(cfg_9b())
    matmul_per_layer = 4096 * 4608 + 4096 * 4096 + 3 * 4096 * 13696  # qkv, out, gate/up + down
    want = 6 * (40 * matmul_per_layer + V * 4096) + 12 * 40 * 4096 * 8192
    assert A.flops_per_token(cfg_9b()) == pytest.approx(want, rel=1e-4)  # qkv bias: 4608 x 40 extra params


def test_memory_9b_layout_by_hand():
    """9b.yaml on 128 GPUs: TP 2, PP 2, DP 32, ZeRO-1, bf16, sequence parallel, full recompute. The
    last stage is the worst: it holds the head and the fp32 loss over the vocab."""
    cfg = cfg_9b()
    V = padded_9b(cfg)
    mem = A.memory_per_gpu(cfg, 128)
    assert mem["stage"] == 1 and mem["in_flight_micro_batches"] == 1
    layer = (4096 * 4608 + 4608 + 4096 * 4096 + 3 * 4096 * 13696) // 2 + 2 * 4096  # TP halves, norms whole
    params = 20 * layer + 4096 + V * 4096 // 2  # 20 layers, final norm, half the head
    assert mem["params_on_gpu"] == params
    assert mem["weights"] == 2 * params  # bf16
    assert mem["grads"] == 4 * params  # fp32 accumulation, whole with ZeRO-1
    assert mem["optimizer"] == 12 * params / 32  # fp32 master + Adam m, v over DP 32
    tokens = 8192
    full_layer = 2 * (2 * 4096 + 2 * 256 + 4 * 13696) // 2 + 2 * 4 * 4096 // 2 + 4 * 32 // 2  # bytes/token, /TP
    assert full_layer == 79_936  # 2 B x (31,744 sharded + 8,192 whole-over-TP) + LSE
    head = tokens * (2 * 4096 // 2 + (2 + 4) * V // 2)  # final-norm input + logits bf16 + fp32
    ckpt = 20 * tokens * 2 * 4096 // 2 + tokens * full_layer + head  # layer inputs + one rebuilt layer
    assert mem["activations"] == ckpt
    assert mem["activations_no_checkpointing"] == 20 * tokens * full_layer + head
    assert mem["total"] == 2 * params + 4 * params + 12 * params / 32 + ckpt
    # ZeRO-3 at PP 1 partitions weights and grads too, holding two gathered units (the head is largest).
    z3 = A.memory_per_gpu(cfg_9b(**{"parallel.pipeline": 1, "parallel.zero_stage": 3}), 128)
    p1 = 40 * layer + 4096 + 2 * V * 4096 // 2
    assert z3["params_on_gpu"] == p1
    assert z3["weights"] == pytest.approx(2 * p1 / 64 + 2 * 2 * V * 4096 // 2)
    assert z3["grads"] == pytest.approx(4 * p1 / 64) and z3["optimizer"] == pytest.approx(12 * p1 / 64)


def test_llama3_8b_against_torchtitan():
    """torchtitan docs/performance.md, Table 1 (FSDP, bf16, selective op AC, H100): 5,762 tokens/s/GPU,
    82.4 GiB. The planner uses the same single efficiency constant as for every other config."""
    cfg = llama3_8b()
    cluster = load_config(A.ClusterConfig, ROOT / "configs/cluster/h100_96gb_500w.yaml")
    est = A.estimate(cfg, cluster, activation_checkpointing="selective")
    assert abs(est["tokens_per_s_per_gpu"] / 5762 - 1) < 0.25, est["tokens_per_s_per_gpu"]
    assert abs(est["memory"]["total"] / A.GiB / 82.4 - 1) < 0.25, est["memory"]["total"] / A.GiB
    assert est["fits"]
    # Without recomputation it would not fit; full recomputation is slower than selective.
    assert not A.estimate(cfg, cluster, "none")["fits"]
    assert A.estimate(cfg, cluster, "all")["tokens_per_s"] < est["tokens_per_s"]


def test_estimate_9b_bubble_and_mfu():
    cfg = cfg_9b()
    est = A.estimate(cfg, load_config(A.ClusterConfig, ROOT / "configs/cluster/h100_8x.yaml", ["nodes=16"]))
    assert est["micro_batches"] == 16 and est["bubble_fraction"] == pytest.approx(1 / 17)
    assert est["mfu"] == pytest.approx(A.flops_per_token(cfg) * est["tokens_per_s_per_gpu"] / 989e12)
    # Full recomputation costs a third of the layers' work, so MFU is below 3/4 of the compute efficiency.
    assert est["mfu"] < 0.75 * A.COMPUTE_EFFICIENCY
    with pytest.raises(ConfigError, match="world size"):
        A.memory_per_gpu(cfg, 126)


def test_plan_cli_9b_on_h100_nodes():
    spec = importlib.util.spec_from_file_location("plan", ROOT / "launch/plan.py")
    plan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plan)
    main = plan.main
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["--config", str(ROOT / "configs/9b.yaml"), "--cluster",
                     str(ROOT / "configs/cluster/h100_8x.yaml"), "--nodes", "1", "--top", "100"]) == 0
    lines = out.getvalue().strip().splitlines()
    assert lines[-1].startswith("config_layout=TP2xPP2xDP2_ZeRO1_AC-all") and "best_days=" in lines[-1]
    table = lines[lines.index(next(ln for ln in lines if ln.lstrip().startswith("TP PP"))) + 1:
                  lines.index("config's layout:")]
    rows = [ln for ln in table if not ln.lstrip().startswith("...")]
    assert len(rows) >= 10
    # Only layouts the schema accepts: 2 KV heads allow TP <= 2; 40 layers allow PP in {1, 2, 4, 8}.
    assert {int(r[1:].split()[0]) for r in rows} <= {1, 2}
    # One node cannot hold 9.5B with whole optimizer state on few ranks: some layouts are OOM, listed last.
    fits = [next(w for w in r.split() if w in ("ok", "OOM")) for r in rows]
    assert "OOM" in fits and fits == sorted(fits, key=lambda f: f == "OOM")
    rows_plan = A.plan(cfg_9b(), A.ClusterConfig(nodes=1))
    for r in rows_plan:
        assert r["fits"] == (r["memory"]["total"] <= 0.9 * 79.6 * A.GiB)
        assert r["recommended"] == (r["fits"] and r["hidden_comm_fraction"] <= A.MAX_HIDDEN_COMM_FRACTION)
    order = [(not r["fits"], not r["recommended"], -r["tokens_per_s"]) for r in rows_plan]
    assert order == sorted(order)
    best = rows_plan[0]
    assert best["recommended"] and f"best_layout=TP{best['tensor']}xPP{best['pipeline']}xDP" in lines[-1]


def test_dry_run_report_9b():
    cfg = cfg_9b()
    text = A.dry_run_report(cfg, 128)
    total = 2 * padded_9b(cfg) * 4096 + 40 * 203_960_832 + 4096
    assert f"parameters: {total:,}" in text and "FLOPs per token: 6.919e+10" in text
    for k in ("weights", "grads", "optimizer", "activations"):
        assert k in text


def test_step_time_9b_by_hand():
    """The documented time model, written out for 9b.yaml on 16 nodes (TP 2, PP 2, DP 32, 16 micro-batches)."""
    cfg = cfg_9b()
    V = padded_9b(cfg)
    est = A.estimate(cfg, load_config(A.ClusterConfig, ROOT / "configs/cluster/h100_8x.yaml", ["nodes=16"]))
    matmul = 4096 * 4608 + 4608 + 4096 * 4096 + 3 * 4096 * 13696
    layer = 6 * matmul + 12 * 4096 * 8192
    recompute = 2 * matmul + 4 * 4096 * 8192  # activation_checkpointing: all
    rate = 0.40 * 989e12
    compute = 8192 * (20 * (layer + recompute) + 6 * V * 4096) / 2 / rate  # last stage (head) is slowest
    act = 8192 * 4096 * 2
    tp = (20 * 12 + 4) * 0.5 * act / 360e9  # TP pairs inside a node
    pp = 2 * act / 2 / 40e9  # stages 64 ranks apart: across nodes
    params = 20 * (matmul // 2 + 2 * 4096) + 4096 + V * 4096 // 2
    dp = (2 * 31 / 32 * 4 * params + 31 / 32 * 2 * params) / 40e9  # fp32 all-reduce + bf16 all-gather
    assert est["step_s"] == pytest.approx(17 * (compute + tp + pp) + dp, rel=1e-9)
    assert est["tokens_per_s"] == pytest.approx(512 * 8192 / est["step_s"], rel=1e-12)
