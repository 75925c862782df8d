"""Benchmark: fused chunked linear + cross-entropy (megaspeech/kernels/linear_cross_entropy.py) vs the plain
loss (head matmul -> fp32 logits -> F.cross_entropy), forward + backward, same inputs, same run.

- Peak memory of one forward+backward of each method, each in a fresh subprocess (CPU: ru_maxrss
  above the level after the inputs and a warm-up exist), so the figure belongs to that method.
- Speed: one process alternates the two methods `--repeat` times and keeps each one's best
  time, so a shared machine's changing load hits both alike.
- GPU (when present, script unchanged): bf16 hidden/weight at `--gpu_*` shapes (default the
  GLM-4-9B head: 168,064 vocabulary, H=4096, 8,192 tokens), peak from max_memory_allocated.

    python benchmarks/fused_loss.py [--n 4096 --h 128 --v 32000 --repeat 3]

Prints name=value lines; `mem_ratio` = plain peak / fused peak, `ratio` = plain time / fused time.
"""
import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from megaspeech.kernels.linear_cross_entropy import (linear_cross_entropy,
                                          linear_cross_entropy_reference)

METHODS = {"plain": linear_cross_entropy_reference, "fused": linear_cross_entropy}


def _inputs(n, h, v, dtype, device):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=g).to(device, dtype)
    weight = (torch.randn(v, h, generator=g) * h ** -0.5).to(device, dtype)
    labels = torch.randint(0, v, (n,), generator=g).to(device)
    tok_w = torch.full((n,), 1.0 / n, device=device)
    return hidden, weight, labels, tok_w


def _step(method, inputs, chunk):
    hidden, weight, labels, tok_w = inputs
    h = hidden.detach().requires_grad_()
    w = weight.detach().requires_grad_()
    kw = {"chunk_tokens": chunk} if method == "fused" else {}
    loss, _ = METHODS[method](h, w, labels, tok_w, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def worker(method, args):
    inputs = _inputs(args.n, args.h, args.v, torch.float32, "cpu")
    _step(method, tuple(t[:8] for t in inputs[:1]) + inputs[1:2] + tuple(t[:8] for t in inputs[2:]),
          args.chunk)  # warm up (allocator, BLAS) before the window opens
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = _step(method, inputs, args.chunk)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"peak": peak, "loss": float(out[0])}))


def compare(inputs, args, sync):
    res = {m: {"time": float("inf")} for m in METHODS}
    for m in METHODS:
        res[m]["out"] = _step(m, inputs, args.chunk)  # warm-up, and the outputs to compare
    for _ in range(args.repeat):
        for m in METHODS:
            sync()
            t0 = time.perf_counter()
            _step(m, inputs, args.chunk)
            sync()
            res[m]["time"] = min(res[m]["time"], time.perf_counter() - t0)
    return res


def report(prefix, res):
    for m in METHODS:
        print(f"{prefix}_{m}_fwd_bwd_s={res[m]['time']:.4f}")
        print(f"{prefix}_{m}_peak_mib={res[m]['peak'] / 2**20:.1f}")
    for i, name in enumerate(("loss", "grad_hidden", "grad_weight")):
        a, b = res["plain"]["out"][i].double(), res["fused"]["out"][i].double()
        print(f"{prefix}_{name}_max_rel_diff={((a - b).abs().max() / a.abs().max()).item():.2e}")
    print(f"{prefix}_mem_ratio={res['plain']['peak'] / max(res['fused']['peak'], 1):.2f}")
    print(f"{prefix}_ratio={res['plain']['time'] / res['fused']['time']:.3f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4096)  # tokens (e.g. 2 x 2048)
    p.add_argument("--h", type=int, default=128)
    p.add_argument("--v", type=int, default=32000)
    p.add_argument("--chunk", type=int, default=None, help="tokens per chunk (default: 32M logits)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--gpu_n", type=int, default=8192)
    p.add_argument("--gpu_h", type=int, default=4096)
    p.add_argument("--gpu_v", type=int, default=168064)
    p.add_argument("--worker", choices=list(METHODS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args)
    print(f"fused_loss N={args.n} H={args.h} V={args.v} fp32 threads={torch.get_num_threads()} "
          f"baseline=plain (logits, fp32 cast, F.cross_entropy), forward+backward")
    peaks = {}  # workers first: a child's ru_maxrss starts at this process's high-water mark
    for m in METHODS:
        cmd = [sys.executable, __file__, "--worker", m] + [f"--{k}={getattr(args, k)}" for k in ("n", "h", "v")]
        cmd += [f"--chunk={args.chunk}"] if args.chunk else []
        peaks[m] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True)
                              .stdout.strip().splitlines()[-1])["peak"]
    res = compare(_inputs(args.n, args.h, args.v, torch.float32, "cpu"), args, lambda: None)
    for m in METHODS:
        res[m]["peak"] = peaks[m]
    report("cpu", res)
    if torch.cuda.is_available():
        print(f"gpu N={args.gpu_n} H={args.gpu_h} V={args.gpu_v} bf16")
        inputs = _inputs(args.gpu_n, args.gpu_h, args.gpu_v, torch.bfloat16, "cuda")
        gres = compare(inputs, args, torch.cuda.synchronize)
        for m in METHODS:
            gres[m]["out"] = None
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            gres[m]["out"] = _step(m, inputs, args.chunk)
            torch.cuda.synchronize()
            gres[m]["peak"] = torch.cuda.max_memory_allocated() - base
        report("gpu", gres)


if __name__ == "__main__":
    main()
