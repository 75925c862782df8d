"""Benchmark: CTC compression vs the Python loop over runs (`ctc_compress_reference`), same inputs,
same run.

- Peak memory of one forward of each method, each in a fresh subprocess (CPU: ru_maxrss above
  the level after the inputs exist), so the figure belongs to that method alone.
- Speed: one process alternates the two methods `--repeat` times and keeps each one's best
  time, so a shared machine's changing load hits both alike. The headline is the forward
  (weighted mean, remove_blank) at the full batch. Forward+backward is also timed, on the first
  `--bwd_b` sequences only: the loop's autograd graph (one slice per run, each of whose
  backward writes a full-size gradient) grows quadratically and would take minutes at full size.
- GPU (when present, script unchanged): the Triton forward/backward vs the loop on CUDA, peak
  from torch.cuda.max_memory_allocated; its headline then comes last.

    python benchmarks/ctc_compress.py [--b 16 --t 1000 --d 768 --repeat 5]
"""
import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from megaspeech.kernels.ctc_compress import ctc_compress, ctc_compress_reference

BLANK = 0
METHODS = ("loop", "ours")


def _inputs(b, t, d, v, device):
    """Frames at 50 Hz with CTC-like labels: runs of 1-6 frames, ~40% of runs blank."""
    g = torch.Generator().manual_seed(0)
    runs = torch.randint(1, 7, (b, t), generator=g)  # at least t runs per row: enough frames
    lab = torch.randint(1, v, (b, t), generator=g)
    lab[torch.rand(b, t, generator=g) < 0.4] = BLANK
    labels = torch.stack([lab[i].repeat_interleave(runs[i])[:t] for i in range(b)])
    lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
    lengths[0] = t
    h = torch.randn(b, t, d, generator=g)
    probs = torch.rand(b, t, generator=g) + 0.1
    return h.to(device), labels.to(device), lengths.to(device), probs.to(device)


def _step(method, inputs, grad):
    """One call; with grad=True also the backward of a square loss. Returns (out, h, probs)."""
    h, labels, lengths, probs = inputs
    fn = ctc_compress_reference if method == "loop" else ctc_compress
    if not grad:
        with torch.no_grad():
            return fn(h, labels, lengths, BLANK, reduce="weighted", probs=probs)[0], h, probs
    hh, pp = h.detach().clone().requires_grad_(), probs.detach().clone().requires_grad_()
    out, _ = fn(hh, labels, lengths, BLANK, reduce="weighted", probs=pp)
    out.square().sum().backward()
    return out, hh, pp


def _best(fn, repeat, sync):
    best = float("inf")
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def compare(inputs, args, device):
    """Alternating best-of timings and an agreement check: {method: {...}}."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    small = tuple(t[:args.bwd_b] for t in inputs)
    res = {m: {"fwd": float("inf"), "both": float("inf")} for m in METHODS}
    for m in METHODS:
        _step(m, tuple(t[:1] for t in inputs), True)  # warm up / compile
        out, hh, pp = _step(m, small, True)
        res[m]["check"] = [out.double().sum().item(), hh.grad.double().abs().sum().item(),
                           pp.grad.double().abs().sum().item()]
        res[m]["fwd_out"] = _step(m, inputs, False)[0]
    for _ in range(args.repeat):
        for m in METHODS:
            res[m]["fwd"] = min(res[m]["fwd"], _best(lambda: _step(m, inputs, False), 1, sync))
            res[m]["both"] = min(res[m]["both"], _best(lambda: _step(m, small, True), 1, sync))
    return res


def worker(method, args):
    """Peak extra RSS of one forward on CPU, in this fresh process."""
    inputs = _inputs(args.b, args.t, args.d, args.v, "cpu")
    _step(method, tuple(t[:1] for t in inputs), False)  # warm up before the window opens
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _step(method, inputs, False)
    print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base}))


def report(prefix, res, bwd_b):
    for m in METHODS:
        print(f"{prefix}_{m}_fwd_s={res[m]['fwd']:.4f}")
        print(f"{prefix}_{m}_fwd_bwd_b{bwd_b}_s={res[m]['both']:.4f}")
        print(f"{prefix}_{m}_fwd_peak_mib={res[m]['peak'] / 2**20:.1f}")
    err = max(abs(a - b) / max(abs(a), 1e-9) for a, b in zip(res["loop"]["check"], res["ours"]["check"]))
    fwd_err = (res["loop"]["fwd_out"] - res["ours"]["fwd_out"]).abs().max().item()
    print(f"{prefix}_max_abs_diff_fwd={fwd_err:.2e}")
    print(f"{prefix}_checksum_rel_err_fwd_bwd={err:.2e}")  # output, grad h, grad weights
    print(f"{prefix}_fwd_bwd_b{bwd_b}_ratio={res['loop']['both'] / res['ours']['both']:.1f}")
    return res["loop"]["fwd"] / res["ours"]["fwd"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--b", type=int, default=16)
    p.add_argument("--t", type=int, default=1000)  # 20 s of 50 Hz HuBERT frames
    p.add_argument("--d", type=int, default=768)  # HuBERT base, the bridge paper's encoder
    p.add_argument("--v", type=int, default=500)
    p.add_argument("--bwd_b", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args)
    print(f"ctc_compress B={args.b} T={args.t} D={args.d} reduce=weighted mode=remove_blank "
          f"threads={torch.get_num_threads()} baseline=python loop over runs (ctc_compress_reference)")
    peaks = {}
    for m in METHODS:
        cmd = [sys.executable, __file__, "--worker", m]
        cmd += [f"--{k}={getattr(args, k)}" for k in ("b", "t", "d", "v")]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        peaks[m] = json.loads(out.strip().splitlines()[-1])["peak"]
    res = compare(_inputs(args.b, args.t, args.d, args.v, "cpu"), args, "cpu")
    for m in METHODS:
        res[m]["peak"] = peaks[m]
    cpu_ratio = report("cpu", res, args.bwd_b)
    if torch.cuda.is_available():
        inputs = _inputs(args.b, args.t, args.d, args.v, "cuda")
        gres = compare(inputs, args, "cuda")
        for m in METHODS:  # peak of one forward above the inputs
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            _step(m, inputs, False)
            torch.cuda.synchronize()
            gres[m]["peak"] = torch.cuda.max_memory_allocated() - base
        print(f"cpu_fwd_ratio={cpu_ratio:.1f}")
        print(f"ratio={report('gpu', gres, args.bwd_b):.1f}")  # headline: Triton forward vs loop on GPU
    else:
        print(f"ratio={cpu_ratio:.1f}")  # headline: torch path forward vs loop on CPU


if __name__ == "__main__":
    main()
