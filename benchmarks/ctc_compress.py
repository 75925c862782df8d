"""Benchmark: CTC compression vs the Python loop over runs (`ctc_compress_reference`), same inputs,
same run, forward and forward+backward.

CPU: peak memory of one forward+backward of the vectorised torch path and of the loop, each in a
fresh subprocess so peak RSS (above the level after the inputs exist) belongs to that method
alone; speed from one process alternating the two (ratio = median of loop/ours over the
pairs), so a shared machine's changing load hits both alike. GPU (when present, script unchanged):
the Triton forward/backward vs the loop on CUDA, peak from torch.cuda.max_memory_allocated.
Prints `name=value`; the headline `ratio=` (loop time / ours for forward+backward, the training
use in the bridge) comes last: the GPU one when a GPU is present, else the CPU one.

    python benchmarks/ctc_compress.py [--b 16 --t 1000 --d 768 --repeat 3]
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import torch  # noqa: E402

from kernels.ctc_compress import ctc_compress, ctc_compress_reference  # noqa: E402

BLANK = 0


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


def _call(method, h, labels, lengths, probs):
    if method == "loop":
        return ctc_compress_reference(h, labels, lengths, BLANK, reduce="weighted", probs=probs)
    return ctc_compress(h, labels, lengths, BLANK, reduce="weighted", probs=probs)


def _time(fn, sync):
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def _step(method, inputs, grad):
    """One call; with grad=True also the backward of a square loss. Returns (out, h, probs)."""
    h, labels, lengths, probs = inputs
    if not grad:
        with torch.no_grad():
            return _call(method, h, labels, lengths, probs)[0], h, probs
    hh, pp = h.detach().clone().requires_grad_(), probs.detach().clone().requires_grad_()
    out, _ = _call(method, hh, labels, lengths, pp)
    out.square().sum().backward()
    return out, hh, pp


def compare(inputs, repeat, device):
    """Alternating timings of both methods: {method: {fwd, both, check}}."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    res = {m: {"fwd": [], "both": []} for m in ("loop", "ours")}
    for m in res:
        _step(m, tuple(t[:1] for t in inputs), True)  # warm up / compile
        out, hh, pp = _step(m, inputs, True)
        res[m]["check"] = [out.double().sum().item(), hh.grad.double().abs().sum().item(),
                           pp.grad.double().abs().sum().item()]
    for _ in range(repeat):
        for m in res:
            res[m]["fwd"].append(_time(lambda: _step(m, inputs, False), sync))
            res[m]["both"].append(_time(lambda: _step(m, inputs, True), sync))
    return res


def worker(method, args):
    """Peak extra RSS of one forward+backward on CPU, in this fresh process."""
    inputs = _inputs(args.b, args.t, args.d, args.v, "cpu")
    _step(method, tuple(t[:1] for t in inputs), True)  # warm up before the window opens
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _step(method, inputs, True)
    print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base}))


def report(prefix, res):
    med = statistics.median
    for m in ("loop", "ours"):
        print(f"{prefix}_{m}_fwd_s={med(res[m]['fwd']):.4f}")
        print(f"{prefix}_{m}_fwd_bwd_s={med(res[m]['both']):.4f}")
        print(f"{prefix}_{m}_peak_mib={res[m]['peak'] / 2**20:.0f}")
    err = max(abs(a - b) / max(abs(a), 1e-9) for a, b in zip(res["loop"]["check"], res["ours"]["check"]))
    print(f"{prefix}_checksum_rel_err={err:.2e}")  # output, grad h, grad weights agree
    print(f"{prefix}_fwd_ratio={med(a / b for a, b in zip(res['loop']['fwd'], res['ours']['fwd'])):.1f}")
    return med(a / b for a, b in zip(res["loop"]["both"], res["ours"]["both"]))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--b", type=int, default=16)
    p.add_argument("--t", type=int, default=1000)  # 20 s of 50 Hz HuBERT frames
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--v", type=int, default=500)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--worker", choices=["loop", "ours"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args)
    print(f"ctc_compress B={args.b} T={args.t} D={args.d} reduce=weighted mode=remove_blank "
          f"threads={torch.get_num_threads()} baseline=python loop over runs (ctc_compress_reference)")
    peaks = {}
    for m in ("ours", "loop"):
        cmd = [sys.executable, __file__, "--worker", m] + [f"--{k}={getattr(args, k)}" for k in ("b", "t", "d", "v")]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        peaks[m] = json.loads(out.strip().splitlines()[-1])["peak"]
    res = compare(_inputs(args.b, args.t, args.d, args.v, "cpu"), args.repeat, "cpu")
    for m in res:
        res[m]["peak"] = peaks[m]
    cpu_ratio = report("cpu", res)
    if torch.cuda.is_available():
        inputs = _inputs(args.b, args.t, args.d, args.v, "cuda")
        gres = compare(inputs, args.repeat, "cuda")
        for m in gres:  # peak of one forward+backward above the inputs
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            _step(m, inputs, True)
            torch.cuda.synchronize()
            gres[m]["peak"] = torch.cuda.max_memory_allocated() - base
        print(f"cpu_ratio={cpu_ratio:.1f}")
        print(f"ratio={report('gpu', gres):.1f}")  # headline: Triton fwd+bwd vs loop on GPU
    else:
        print(f"ratio={cpu_ratio:.1f}")  # headline: torch path fwd+bwd vs loop on CPU

if __name__ == "__main__":
    main()
