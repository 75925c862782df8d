"""Rank the TP x PP x DP layouts of a config on a cluster shape: memory per GPU, bubble, MFU,
tokens/s and days to the token budget (formulas and their conventions: megaspeech/accounting.py).

    python launch/plan.py --config configs/9b.yaml --cluster configs/cluster/h100_8x.yaml nodes=16
    (also --nodes 16; `cluster.<field>=value` overrides the cluster file, other `a.b=v` the config)

Layouts that do not fit in memory are listed last, marked OOM; the config's own layout is marked *.
Column "hidden": ZeRO-2/3 traffic the estimate assumes hidden behind compute, over that compute;
above MAX_HIDDEN_COMM_FRACTION (marked !) the layout is listed after the others and not recommended,
as real overlap is partial. The last line is the headline: the config's layout and the best layout, as name=value pairs.
"""
from __future__ import annotations

import sys

from megaspeech import accounting as A
from megaspeech.config.cli import parse_args
from megaspeech.config.load import ConfigError, load_config
from megaspeech.config.schema import PretrainConfig


def _extra(p):
    p.add_argument("--cluster", required=True, help="cluster shape YAML, e.g. configs/cluster/h100_8x.yaml")
    p.add_argument("--nodes", type=int, default=None, help="number of nodes (overrides the cluster file)")
    p.add_argument("--tokens", type=float, default=None,
                   help="token budget (default: train.steps x train.global_batch x train.seq_len)")
    p.add_argument("--top", type=int, default=20, help="rows to print")


def _row(r: dict, tokens: float, own: bool) -> str:
    mem = r["memory"]
    gib = [mem[k] / A.GiB for k in ("weights", "grads", "optimizer", "activations", "total")]
    days = tokens / r["tokens_per_s"] / 86400
    return (f"{'*' if own else ' '} {r['tensor']:>2} {r['pipeline']:>2} {r['data_parallel']:>4} {r['zero_stage']:>4} "
            f"{r['activation_checkpointing']:>4} " + " ".join(f"{g:6.1f}" for g in gib)
            + f" {'ok' if r['fits'] else 'OOM':>4} {100 * r['bubble_fraction']:6.1f} "
              f"{r['hidden_comm_fraction']:5.2f}{'!' if r['hidden_comm_fraction'] > A.MAX_HIDDEN_COMM_FRACTION else ' '}"
              f" {100 * r['mfu']:5.1f} "
              f"{r['tokens_per_s_per_gpu']:8.0f} {r['tokens_per_s'] / 1e6:7.3f} {days:7.1f}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `nodes=16` and `cluster.<field>=value` go to the cluster shape; other overrides to the config
    is_cluster = [a.startswith(("nodes=", "cluster.")) for a in argv]
    cluster_over = [a.removeprefix("cluster.") for a, c in zip(argv, is_cluster) if c]
    cfg, args = parse_args(PretrainConfig, __doc__.splitlines()[0],
                           [a for a, c in zip(argv, is_cluster) if not c], extra=_extra)
    if args.nodes:
        cluster_over.append(f"nodes={args.nodes}")
    try:
        cluster = load_config(A.ClusterConfig, args.cluster, cluster_over)
        cfg.data_parallel_size(cluster.world_size)
    except ConfigError as e:
        print(f"plan: {e}", file=sys.stderr)
        return 2
    tokens = args.tokens or A.token_budget(cfg)
    pc = A.param_counts(cfg)
    print(f"config {args.config}: {pc['total'] / 1e9:.3f}B parameters, {A.flops_per_token(cfg):.4g} FLOPs/token, "
          f"seq {cfg.train.seq_len}, global batch {cfg.train.global_batch} x micro {cfg.train.micro_batch}, "
          f"budget {tokens / 1e12:.3f}T tokens")
    print(f"cluster {cluster.name}: {cluster.nodes} nodes x {cluster.gpus_per_node} GPUs, "
          f"{cluster.gpu_memory_gib} GiB ({cluster.usable_memory_fraction:.0%} usable), {cluster.peak_tflops} TFLOP/s, "
          f"busbw {cluster.intra_node_gbps}/{cluster.inter_node_gbps} GB/s intra/inter; "
          f"compute at {A.COMPUTE_EFFICIENCY:.0%} of peak")
    rows = A.plan(cfg, cluster)
    if not rows:
        print("plan: no valid layout for this config and world size", file=sys.stderr)
        return 2
    p = cfg.parallel
    ac = cfg.train.activation_checkpointing
    own_key = (p.tensor, p.pipeline, p.zero_stage, ac if isinstance(ac, str) else "list")
    own = A.estimate(cfg, cluster)
    own.update(tensor=p.tensor, pipeline=p.pipeline, zero_stage=p.zero_stage,
               activation_checkpointing=ac if isinstance(ac, str) else "list")
    print("  TP PP   DP ZeRO   AC  wts GiB grads  optim   acts  total  fit bubl% hidden  MFU% tok/s/GPU  Mtok/s    days")
    for r in rows[:args.top]:
        key = (r["tensor"], r["pipeline"], r["zero_stage"], r["activation_checkpointing"])
        print(_row(r, tokens, key == own_key))
    if len(rows) > args.top:
        print(f"  ... {len(rows) - args.top} more layouts")
    print("config's layout:")
    print(_row(own, tokens, True))
    best = next((r for r in rows if r["recommended"]), rows[0])

    def tag(r):
        return (f"TP{r['tensor']}xPP{r['pipeline']}xDP{r['data_parallel']}"
                f"_ZeRO{r['zero_stage']}_AC-{r['activation_checkpointing']}")
    print(f"config_layout={tag(own)} config_tokens_per_s_per_gpu={own['tokens_per_s_per_gpu']:.0f} "
          f"config_mfu={own['mfu']:.3f} config_days={tokens / own['tokens_per_s'] / 86400:.1f} "
          f"best_layout={tag(best)} best_mfu={best['mfu']:.3f} "
          f"best_days={tokens / best['tokens_per_s'] / 86400:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
