"""Benchmark: the fused Triton kernels against their eager torch references, same inputs, same run
(GPU; on a machine without CUDA it checks the kernels once under the interpreter and says so).

- RMSNorm, RoPE (Llama halves on q of a full-rotary head; GLM partial interleaved) and SwiGLU,
  forward + backward at the GLM-4-9B slice shape (seq 8192, H 4096, 32 heads of 128, 2 KV heads,
  FFN 13696), bf16: `<name>_torch_s`, `<name>_triton_s`, `<name>_ratio` (torch / triton), and the
  achieved bandwidth of the Triton pass over its bytes moved.
- CTC compression forward, B=16 T=1000 D=768 (the issue's shape): pad_to="max" (one host sync)
  and pad_to="input" (none), against the memory floor of reading h once (`h.sum(1)`):
  `ctc_<pad>_over_floor` (goal: <= 5).

    python benchmarks/fused_kernels.py [--seq 8192 --repeat 20]
"""
import argparse
import os

if __name__ == "__main__" and not __import__("torch").cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported by the kernels

import torch

from megaspeech.kernels.ctc_compress import ctc_compress
from megaspeech.kernels.rmsnorm import rms_norm
from megaspeech.kernels.rope import apply_rope
from megaspeech.kernels.swiglu import swiglu
from megaspeech.model.llm import rope_tables


def _time(fn, repeat):
    """Median seconds of fn() on CUDA (events), after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return sorted(times)[len(times) // 2]


def _fwd_bwd(fn, inputs, gout):
    leaves = [t.detach().requires_grad_() for t in inputs]

    def run():
        out = fn(*leaves)
        out.backward(gout)
    return run


def cases(seq, dev, dtype):
    """(name, fn(backend) -> callable inputs..., inputs, grad_out, bytes moved fwd+bwd)."""
    H, F, heads, kv, hd = 4096, 13696, 32, 2, 128
    g = torch.Generator(device=dev).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=dev, generator=g).to(dtype)  # noqa: E731
    x, w = r(seq, 1, H), r(H)
    el = dtype.itemsize
    out = [("rms_norm", lambda be: lambda a, b: rms_norm(a, b, 1e-5, backend=be), [x, w], r(seq, 1, H),
            5 * seq * H * el)]  # fwd: x, y; bwd: x, g, dx
    qkv = r(seq, 1, kv, heads // kv + 2, hd).permute(1, 2, 3, 0, 4)  # the attention's strided view
    for fam, rot in (("llama", hd), ("glm", hd // 2)):
        cos, sin = rope_tables(seq, rot, 10000.0, dev)
        q = qkv[:, :, : heads // kv]
        out.append((f"rope_{fam}", lambda be, c=cos, s=sin, i=fam == "glm": lambda a: apply_rope(a, c, s, i, backend=be),
                    [q], r(*q.shape), 4 * q.numel() * el))
    out.append(("swiglu", lambda be: lambda a, b: swiglu(a, b, backend=be), [r(seq, 1, F), r(seq, 1, F)],
                r(seq, 1, F), 8 * seq * F * el))  # fwd: 2 in, 1 out; bwd: 3 in, 2 out
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=8192)
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()
    if not torch.cuda.is_available():
        # no GPU: one small interpreter run of each kernel against its reference, then stop
        for name, make, inputs, gout, _ in cases(16, "cpu", torch.float32):
            a = [t.detach().requires_grad_() for t in inputs]
            b = [t.detach().requires_grad_() for t in inputs]
            make("triton")(*a).backward(gout)
            make("torch")(*b).backward(gout)
            err = max((x.grad - y.grad).abs().max().item() for x, y in zip(a, b))
            print(f"{name}_interpreter_grad_max_abs_diff={err:.2e}")
        print("gpu=unavailable (run on a CUDA machine for the timings)")
        return
    dev = "cuda"
    print(f"fused_kernels seq={args.seq} bf16 device={torch.cuda.get_device_name()} baseline=eager torch reference")
    for name, make, inputs, gout, nbytes in cases(args.seq, dev, torch.bfloat16):
        t_ref = _time(_fwd_bwd(make("torch"), inputs, gout), args.repeat)
        t_tri = _time(_fwd_bwd(make("triton"), inputs, gout), args.repeat)
        print(f"{name}_torch_s={t_ref:.6f}")
        print(f"{name}_triton_s={t_tri:.6f}")
        print(f"{name}_triton_gbps={nbytes / t_tri / 1e9:.0f}")
        print(f"{name}_ratio={t_ref / t_tri:.2f}")
    # CTC compression forward at the shape
    gen = torch.Generator().manual_seed(0)
    b, t, d = 16, 1000, 768
    runs = torch.randint(1, 7, (b, t), generator=gen)
    lab = torch.randint(1, 500, (b, t), generator=gen)
    lab[torch.rand(b, t, generator=gen) < 0.4] = 0
    labels = torch.stack([lab[i].repeat_interleave(runs[i])[:t] for i in range(b)]).to(dev)
    lengths = torch.randint(t // 2, t + 1, (b,), generator=gen).to(dev)
    h = torch.randn(b, t, d, generator=gen).to(dev)
    probs = (torch.rand(b, t, generator=gen) + 0.1).to(dev)
    with torch.no_grad():
        floor = _time(lambda: h.sum(1), args.repeat)
        print(f"ctc_floor_read_h_s={floor:.6f}")
        for pad in ("max", "input"):
            s = _time(lambda: ctc_compress(h, labels, lengths, 0, reduce="weighted", probs=probs, pad_to=pad),
                      args.repeat)
            print(f"ctc_{pad}_fwd_s={s:.6f}")
            print(f"ctc_{pad}_over_floor={s / floor:.1f}")


if __name__ == "__main__":
    main()
