"""Parameters, FLOPs, memory and step time of a config: shared by `pretrain.py --dry-run`, the
trainer's MFU and `launch/plan.py`. One copy of every formula lives here.

Model (megaspeech.model): embedding [V, H]; per layer RMSNorm, fused QKV [H -> (a + 2k) d] (+bias
if model.qkv_bias), out proj [H -> H], RMSNorm, SwiGLU (gate+up [H -> 2F], down [F -> H]); final
RMSNorm; LM head [H -> V] unless tied. V is the padded vocab, a heads, k KV heads, d head dim.

Conventions (each a deliberate choice, stated once):
- FLOPs per token = 6 x (matmul parameters: all except the embedding lookup, LM head included)
  + 12 L H S for attention scores and values (forward 4 L H S, backward twice that), counted over
  the full S x S square as PaLM, Megatron-LM and torchtitan do, so our MFU compares with theirs.
- Activation bytes per token and layer (what autograd keeps, one kernel per op, bf16 = 2 bytes):
  norm inputs 2H, QKV input H, q H, k and v 2 k d, attention output H (+ fp32 log-sum-exp per head),
  fc1 input H, gate/up 2F, silu(gate) F, down input F (Korthikanti et al. 2022 counted for SwiGLU +
  GQA without dropout). Sequence parallel divides everything by TP; without it the four H-sized
  norm/linear inputs stay whole. Checkpointed layers keep their input only and recompute one
  layer at a time in backward. "selective" (planner only, torchtitan's op-level policy) keeps every
  other matmul output (QKV, gate/up), attention output and layer input; it recomputes out and down.
- bf16 training state, as DeepSpeed keeps it: bf16 weights (2 B), fp32 gradient accumulation
  (4 B; BF16_Optimizer keeps it whole with ZeRO-0/1, partitioned from ZeRO-2), fp32 master + Adam
  m, v (12 B, partitioned over DP from ZeRO-1). ZeRO-3 also partitions weights and holds two
  gathered units (current + prefetched layer, or embedding/head) at a time. fp32: 4 + 4 + 8 B.
- Pipeline: layers split evenly; stage 0 holds the embedding, the last stage the final norm, head
  and the fp32 cross-entropy (bf16 logits + fp32 copy, 6 B per vocab row per token). With 1F1B,
  stage s holds min(P - s, M) micro-batches of activations. Memory is reported for the worst stage.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

from megaspeech.config.load import ConfigError, check
from megaspeech.config.schema import ParallelConfig, PretrainConfig

GiB = 1024**3

# The one efficiency constant of the time model: the fraction of the dense bf16 peak that a training
# step's compute sustains (matmuls, attention, elementwise kernels, launch gaps; recomputation counted
# as extra work). From the Llama 3 paper (Table 4: 38-43% BF16 MFU on 8K-16K H100s, seq 8192),
# rounded to 0.40 and used for every config. torchtitan's 8B figure (5,762 tokens/s/GPU, 33% MFU on
# 500 W H100s) is a check in tests/ops/test_accounting.py, not an input.
COMPUTE_EFFICIENCY = 0.40

# The estimate hides overlapped ZeRO-2/3 traffic perfectly. Real overlap is partial (NCCL kernels and
# compute share SMs and memory bandwidth), so the planner does not recommend a layout that needs more
# than this fraction of its compute time to hide communication; it lists it, marked "!".
MAX_HIDDEN_COMM_FRACTION = 0.5


@dataclass
class ClusterConfig:
    """A cluster shape (configs/cluster/*.yaml). Bandwidths are achievable collective bus bandwidth
    per GPU (nccl-tests `busbw`), in GB/s (1e9 bytes)."""
    name: str = "h100_8x"
    nodes: int = 1
    gpus_per_node: int = 8
    gpu_memory_gib: float = 79.6
    usable_memory_fraction: float = 0.90  # CUDA context, NCCL buffers, allocator fragmentation
    peak_tflops: float = 989.0  # dense bf16 per GPU
    intra_node_gbps: float = 360.0
    inter_node_gbps: float = 40.0

    def __post_init__(self):
        for f in ("nodes", "gpus_per_node", "gpu_memory_gib", "peak_tflops", "intra_node_gbps", "inter_node_gbps"):
            check(getattr(self, f) > 0, f"cluster.{f}", "must be > 0")
        check(0 < self.usable_memory_fraction <= 1, "cluster.usable_memory_fraction", "must be in (0, 1]")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


# ---------------------------------------------------------------------------------------- params
def param_counts(cfg: PretrainConfig) -> dict:
    """Exact parameter counts of the full (unsharded) model: embedding, per_layer, layers,
    final_norm, head (0 when tied), total. The vocab is padded as the model pads it."""
    m = cfg.model
    H, F, d, V = m.hidden_size, m.ffn_hidden_size, m.head_dim, cfg.padded_vocab_size()
    qkv_out = (m.num_heads + 2 * m.num_kv_heads) * d
    per_layer = 2 * H + H * qkv_out + (qkv_out if m.qkv_bias else 0) + m.num_heads * d * H + 3 * H * F
    out = {"embedding": V * H, "per_layer": per_layer, "layers": m.num_layers * per_layer,
           "final_norm": H, "head": 0 if m.tie_embeddings else V * H}
    out["total"] = sum(out[k] for k in ("embedding", "layers", "final_norm", "head"))
    return out


def _layer_matmul_params(cfg: PretrainConfig) -> int:
    m = cfg.model
    return param_counts(cfg)["per_layer"] - 2 * m.hidden_size  # norms do no matmul (bias: negligible)


def flops_per_token(cfg: PretrainConfig) -> float:
    """Model FLOPs per trained token (forward + backward, no recomputation): the MFU numerator."""
    m, S = cfg.model, cfg.train.seq_len
    head = cfg.padded_vocab_size() * m.hidden_size
    return 6.0 * (m.num_layers * _layer_matmul_params(cfg) + head) + 12.0 * m.num_layers * m.hidden_size * S


def _recompute_flops_per_layer(cfg: PretrainConfig, mode: str) -> float:
    m, S = cfg.model, cfg.train.seq_len
    if mode == "all":  # the whole forward again: matmuls + attention
        return 2.0 * _layer_matmul_params(cfg) + 4.0 * m.hidden_size * S
    if mode == "selective":  # out proj and down proj forward again
        return 2.0 * (m.num_heads * m.head_dim * m.hidden_size + m.ffn_hidden_size * m.hidden_size)
    return 0.0


def _layer_modes(cfg: PretrainConfig, ac) -> list[str]:
    """Per global layer: "none" | "all" | "selective"."""
    ac = cfg.train.activation_checkpointing if ac is None else ac
    L = cfg.model.num_layers
    if isinstance(ac, (list, tuple)):
        return ["all" if i in set(ac) else "none" for i in range(L)]
    check(ac in ("none", "all", "selective"), "train.activation_checkpointing",
          f"{ac!r} is not one of none | all | selective | a list of layer ids")
    return [ac] * L


# ---------------------------------------------------------------------------------------- memory
def _act_bytes_per_token(cfg: PretrainConfig, mode: str) -> float:
    """Saved activation bytes per token for one layer on one GPU (see module docstring)."""
    m, p = cfg.model, cfg.parallel
    t, elt = p.tensor, (2 if cfg.train.precision == "bf16" else 4)
    H, F, kvd = m.hidden_size, m.ffn_hidden_size, m.num_kv_heads * m.head_dim
    whole = t if p.sequence_parallel else 1  # divisor of the tensors TP leaves whole without SP
    lse = 4.0 * m.num_heads / t
    if mode == "all":
        return elt * H / whole
    if mode == "selective":
        return elt * ((H + 2 * kvd) + H + 2 * F) / t + elt * H / whole + lse
    return elt * (2 * H + 2 * kvd + 4 * F) / t + elt * 4 * H / whole + lse


def _stage_params(cfg: PretrainConfig, stage: int) -> tuple[float, float]:
    """(parameters on one GPU of `stage`, largest ZeRO-3 gather unit on it), TP-sharded."""
    m, p, pc = cfg.model, cfg.parallel, param_counts(cfg)
    t, per_stage = p.tensor, m.num_layers // p.pipeline
    layer = (pc["per_layer"] - 2 * m.hidden_size) / t + 2 * m.hidden_size  # norms replicated
    n, unit = per_stage * layer, layer
    if stage == 0:
        n += pc["embedding"] / t
        unit = max(unit, pc["embedding"] / t)
    if stage == p.pipeline - 1:
        n += pc["final_norm"] + pc["head"] / t
        unit = max(unit, pc["head"] / t)
    return n, unit


def _stage_memory(cfg: PretrainConfig, dp: int, stage: int, modes: list[str]) -> dict:
    p, tr = cfg.parallel, cfg.train
    L, P = cfg.model.num_layers, p.pipeline
    n, unit = _stage_params(cfg, stage)
    bf16 = tr.precision == "bf16"
    w_b, o_b = (2, 12) if bf16 else (4, 8)
    z = p.zero_stage
    weights = w_b * n if z < 3 else w_b * n / dp + 2 * w_b * unit
    grads = 4 * n if z < 2 else 4 * n / dp
    optim = o_b * n / (dp if z >= 1 else 1)

    micro = tr.global_batch // (tr.micro_batch * dp)
    in_flight = min(P - stage, micro)
    tokens = tr.micro_batch * tr.seq_len
    own = modes[stage * L // P:(stage + 1) * L // P]

    def acts(layer_modes):
        saved = sum(_act_bytes_per_token(cfg, md) for md in layer_modes) * tokens * in_flight
        if any(md != "none" for md in layer_modes):  # one layer rebuilt in backward at a time
            saved += _act_bytes_per_token(cfg, "none") * tokens
        if stage == P - 1:  # final norm input + logits (bf16) and their fp32 copy in the loss
            elt = 2 if bf16 else 4
            saved += tokens * (elt * cfg.model.hidden_size / (p.tensor if p.sequence_parallel else 1)
                               + (elt + 4) * cfg.padded_vocab_size() / p.tensor)
        return saved

    out = {"weights": weights, "grads": grads, "optimizer": optim, "activations": acts(own),
           "activations_no_checkpointing": acts(["none"] * len(own)),
           "activations_full_checkpointing": acts(["all"] * len(own)),
           "stage": stage, "in_flight_micro_batches": in_flight, "params_on_gpu": n}
    out["total"] = weights + grads + optim + out["activations"]
    return out


def memory_per_gpu(cfg: PretrainConfig, world_size: int, activation_checkpointing=None) -> dict:
    """Bytes per GPU by category for the worst pipeline stage under cfg's layout at `world_size`:
    weights, grads, optimizer, activations (under `activation_checkpointing`, default the config's;
    also activations_no_checkpointing / activations_full_checkpointing), total, plus stage,
    in_flight_micro_batches, params_on_gpu. Raises ConfigError if the layout does not fit the world."""
    dp = cfg.data_parallel_size(world_size)
    modes = _layer_modes(cfg, activation_checkpointing)
    stages = [_stage_memory(cfg, dp, s, modes) for s in range(cfg.parallel.pipeline)]
    return max(stages, key=lambda r: r["total"])


# ------------------------------------------------------------------------------------ step time
def _busbw(cluster: ClusterConfig, ranks_spanned: int) -> float:
    """Bytes/s of a collective whose members span `ranks_spanned` consecutive ranks."""
    inside = ranks_spanned <= cluster.gpus_per_node
    return 1e9 * (cluster.intra_node_gbps if inside else cluster.inter_node_gbps)


def estimate(cfg: PretrainConfig, cluster: ClusterConfig, activation_checkpointing=None) -> dict:
    """Step time of cfg's layout on `cluster` (world = cluster.world_size). Per micro-batch and stage:
    compute = hardware FLOPs (model + recompute) / (COMPUTE_EFFICIENCY x peak); TP collectives (ring,
    (t-1)/t of an activation per half-collective: 4 per layer forward, 4 backward, 4 more when
    recomputed; not overlapped); pipeline sends forward and backward. 1F1B step = (M + P - 1) x the
    slowest stage. Data parallel: ZeRO-0/1 all-reduce fp32 grads (+ bf16 param all-gather for
    ZeRO-1) after the last backward, exposed; ZeRO-2 reduce-scatters each micro-batch behind backward;
    ZeRO-3 gathers weights twice and reduce-scatters grads each micro-batch behind compute.
    Optimizer step, norms and clipping are left out (under 1% of a step at these sizes).
    Returns timings (s), bubble_fraction, hidden_comm_fraction (communication assumed hidden, over
    compute: the larger, the more optimistic the estimate), tokens_per_s,
    tokens_per_s_per_gpu, mfu, memory, fits."""
    m, p, tr = cfg.model, cfg.parallel, cfg.train
    world = cluster.world_size
    dp = cfg.data_parallel_size(world)
    t, P, z = p.tensor, p.pipeline, p.zero_stage
    M = tr.global_batch // (tr.micro_batch * dp)
    modes = _layer_modes(cfg, activation_checkpointing)
    tokens = tr.micro_batch * tr.seq_len
    elt = 2 if tr.precision == "bf16" else 4
    act = tokens * m.hidden_size * elt  # one full activation tensor [b, s, H]
    flops_s = COMPUTE_EFFICIENCY * cluster.peak_tflops * 1e12
    layer_flops = 6.0 * _layer_matmul_params(cfg) + 12.0 * m.hidden_size * tr.seq_len
    head_flops = 6.0 * cfg.padded_vocab_size() * m.hidden_size
    bw_tp, bw_dp, bw_pp = _busbw(cluster, t), _busbw(cluster, t * dp), _busbw(cluster, t * dp * P)
    per_stage = m.num_layers // P

    compute, tp_comm = [], []
    for s in range(P):
        own = modes[s * per_stage:(s + 1) * per_stage]
        f = sum(layer_flops + _recompute_flops_per_layer(cfg, md) for md in own)
        # recomputation repeats the collectives of what it recomputes: all 4 forward ones for a
        # whole layer, the 2 reduce-scatters after out proj and down proj for "selective"
        n_coll = sum({"all": 12, "selective": 10}.get(md, 8) for md in own)
        if s == P - 1:
            f += head_flops
            n_coll += 4 if p.sequence_parallel else 0  # gather before the head, scatter its grad
        compute.append(tokens * f / t / flops_s)
        tp_comm.append(n_coll * (t - 1) / t * act / bw_tp if t > 1 else 0.0)
    pp_comm = 2 * act / (t if p.sequence_parallel else 1) / bw_pp if P > 1 else 0.0
    slowest = max(range(P), key=lambda s: compute[s] + tp_comm[s])
    t_mb = compute[slowest] + tp_comm[slowest] + pp_comm
    t_pipe = (M + P - 1) * t_mb

    n_max = max(_stage_params(cfg, s)[0] for s in range(P))
    frac = (dp - 1) / dp
    hidden_mb = 0.0  # DP traffic per micro-batch assumed hidden behind compute
    if dp == 1:
        dp_exposed = 0.0
    elif z <= 1:
        dp_exposed = (2 * frac * 4 * n_max + (frac * elt * n_max if z == 1 else 0)) / bw_dp
    elif z == 2:
        per_mb = frac * elt * n_max / bw_dp
        hidden_mb = min(per_mb, 2 / 3 * compute[slowest])
        dp_exposed = M * (per_mb - hidden_mb) + frac * elt * n_max / bw_dp
    else:
        per_mb = 3 * frac * elt * n_max / bw_dp
        hidden_mb = min(per_mb, compute[slowest])
        dp_exposed = M * (per_mb - hidden_mb)
    step = t_pipe + dp_exposed

    tok_s = tr.global_batch * tr.seq_len / step
    mem = memory_per_gpu(cfg, world, activation_checkpointing)
    return {"step_s": step, "compute_s": M * compute[slowest], "tp_comm_s": M * tp_comm[slowest],
            "pp_comm_s": M * pp_comm, "bubble_s": (P - 1) * t_mb, "dp_exposed_s": dp_exposed,
            "hidden_comm_fraction": hidden_mb / compute[slowest],
            "bubble_fraction": (P - 1) / (M + P - 1), "micro_batches": M, "data_parallel": dp,
            "tokens_per_s": tok_s, "tokens_per_s_per_gpu": tok_s / world,
            "mfu": flops_per_token(cfg) * tok_s / world / (cluster.peak_tflops * 1e12),
            "memory": mem, "fits": mem["total"] <= cluster.usable_memory_fraction * cluster.gpu_memory_gib * GiB}


def token_budget(cfg: PretrainConfig) -> int:
    """Tokens the config trains on: steps x global batch x sequence length."""
    return cfg.train.steps * cfg.train.global_batch * cfg.train.seq_len


def with_layout(cfg: PretrainConfig, tensor: int, pipeline: int, zero_stage: int, ac) -> PretrainConfig:
    """cfg rebuilt with another layout; the schema's own validation runs (raises ConfigError)."""
    par = ParallelConfig(tensor=tensor, pipeline=pipeline, sequence_parallel=tensor > 1, zero_stage=zero_stage)
    train = dataclasses.replace(cfg.train, activation_checkpointing=ac)
    return dataclasses.replace(cfg, parallel=par, train=train)


def plan(cfg: PretrainConfig, cluster: ClusterConfig) -> list[dict]:
    """Every valid TP x PP x ZeRO x activation-checkpointing layout on the cluster, ranked: layouts
    that fit in memory first, then those within MAX_HIDDEN_COMM_FRACTION, fastest first. Each row is
    `estimate()` plus layout keys and `recommended` (fits and within the hidden-communication bound)."""
    world = cluster.world_size
    divisors = [d for d in range(1, world + 1) if world % d == 0]
    rows = []
    for t, P, ac in itertools.product(divisors, divisors, ("none", "all")):
        for z in ((1,) if P > 1 else (1, 2, 3)):
            try:
                c = with_layout(cfg, t, P, z, ac)
                c.data_parallel_size(world)
            except ConfigError:
                continue
            row = estimate(c, cluster)
            row.update(tensor=t, pipeline=P, zero_stage=z, activation_checkpointing=ac, config=c,
                       recommended=row["fits"] and row["hidden_comm_fraction"] <= MAX_HIDDEN_COMM_FRACTION)
            rows.append(row)
    rows.sort(key=lambda r: (not r["fits"], not r["recommended"], -r["tokens_per_s"]))
    return rows


def dry_run_report(cfg: PretrainConfig, world_size: int) -> str:
    """What `launch/pretrain.py --dry-run` prints: parameters, per-GPU memory by category under the
    config's layout at `world_size`, FLOPs per token. Allocates nothing."""
    pc, mem = param_counts(cfg), memory_per_gpu(cfg, world_size)
    p = cfg.parallel
    lines = [f"parameters: {pc['total']:,} ({pc['total'] / 1e9:.2f}B) = embedding {pc['embedding']:,} + "
             f"{cfg.model.num_layers} layers x {pc['per_layer']:,} + final norm {pc['final_norm']:,} + head {pc['head']:,}",
             f"padded vocab: {cfg.padded_vocab_size():,} (vocab {cfg.vocab.size:,})",
             f"layout: world {world_size} = TP {p.tensor} x PP {p.pipeline} x DP {cfg.data_parallel_size(world_size)}, "
             f"ZeRO-{p.zero_stage}, sequence parallel {p.sequence_parallel}, {cfg.train.precision}, "
             f"activation checkpointing {cfg.train.activation_checkpointing}, "
             f"{cfg.grad_accum_steps(world_size)} micro-batches/step",
             f"memory per GPU (pipeline stage {mem['stage']}, {mem['in_flight_micro_batches']} micro-batches in flight, "
             f"{mem['params_on_gpu'] / 1e9:.3f}B params):"]
    for k in ("weights", "grads", "optimizer", "activations", "total"):
        lines.append(f"  {k:<12} {mem[k] / GiB:8.2f} GiB")
    lines.append(f"  (activations without checkpointing {mem['activations_no_checkpointing'] / GiB:.2f} GiB, "
                 f"with full checkpointing {mem['activations_full_checkpointing'] / GiB:.2f} GiB)")
    lines.append(f"FLOPs per token: {flops_per_token(cfg):.4g} (6 x matmul params + 12 L H S attention)")
    return "\n".join(lines)
