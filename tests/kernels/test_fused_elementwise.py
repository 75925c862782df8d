"""Fused RMSNorm, RoPE (Llama halves, GLM partial interleaved) and SwiGLU: Triton kernels under
the interpreter against their torch references and the fp64 truth, values and gradients.

Rules: fp32 equals the reference to float rounding (the kernels may fuse multiply-adds); fp16/bf16
outputs lie within one unit in the last place of the reference output (two for SwiGLU, whose eager
reference rounds twice), and gradients within 1.5x the reference's own distance to the fp64 truth.
Under the interpreter bf16 results go through an fp32 buffer (megaspeech.kernels._triton.store_dtype)."""
import pytest
import torch

from megaspeech.kernels.rmsnorm import rms_norm, rms_norm_reference
from megaspeech.kernels.rope import apply_rope, apply_rope_reference
from megaspeech.kernels.swiglu import swiglu, swiglu_reference
from megaspeech.model.llm import rope_tables

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _ulp(t: torch.Tensor) -> torch.Tensor:
    """One unit in the last place of each element of t (in its dtype), as fp64."""
    a = t.double().abs().clamp_min(torch.finfo(t.dtype).tiny)
    return torch.exp2(torch.floor(torch.log2(a))) * torch.finfo(t.dtype).eps


def _grads(fn, inputs, gout):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(gout)
    return out.detach(), [t.grad for t in leaves]


def _check(name, dtype, fn_tri, fn_ref, inputs, gout):
    out_t, g_t = _grads(fn_tri, inputs, gout)
    out_r, g_r = _grads(fn_ref, inputs, gout)
    out_x, g_x = _grads(fn_ref, [t.double() for t in inputs], gout.double())  # fp64 truth
    assert out_t.dtype == out_r.dtype and out_t.shape == out_r.shape and out_t.is_contiguous()
    if dtype == torch.float32:
        torch.testing.assert_close(out_t, out_r, rtol=1e-5, atol=1e-6, msg=f"{name} out")
        for i, (a, b) in enumerate(zip(g_t, g_r)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"{name} grad {i}")
        return
    diff = (out_t.double() - out_r.double()).abs()
    tol = _ulp(out_r) * (2.01 if name == "swiglu" else 1.01)  # eager swiglu rounds twice in half
    assert (diff <= tol).all(), f"{name} {dtype}: {int((diff > tol).sum())} outputs off"
    for i, (a, b, x) in enumerate(zip(g_t, g_r, g_x)):
        assert a.dtype == b.dtype
        err, err_ref = (a.double() - x).abs().max(), (b.double() - x).abs().max()
        assert err <= 1.5 * err_ref + 1e-6, f"{name} {dtype} grad {i}: {float(err)} vs reference {float(err_ref)}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [64, 96])  # a power of two, and one that needs masking
def test_rms_norm(seed, dtype, n):
    x = (torch.randn(5, 7, n) * 3).to(dtype)
    w = (1 + 0.3 * torch.randn(n)).to(dtype)
    g = torch.randn(5, 7, n).to(dtype)
    _check("rms_norm", dtype, lambda a, b: rms_norm(a, b, 1e-5, backend="triton"),
           lambda a, b: rms_norm_reference(a, b, 1e-5), [x, w], g)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", ["llama", "glm"])
def test_rope_on_strided_qkv_views(seed, dtype, family):
    """The attention's call: q and k are strided views of the fused QKV projection."""
    B, KV, G, S, hd = 2, 2, 3, 9, 16
    interleaved = family == "glm"
    rot = hd // 2 if interleaved else hd  # GLM rotates half of each head
    cos, sin = rope_tables(S, rot, 10000.0)
    qkv = torch.randn(S, B, KV, G + 2, hd).to(dtype).permute(1, 2, 3, 0, 4)  # [B, kv, g+2, S, hd]
    for part in (qkv[:, :, :G], qkv[:, :, G]):  # q (3 leading dims), k (2)
        assert not part.is_contiguous()
        g = torch.randn(part.shape).to(dtype)
        _check(f"rope {family}", dtype, lambda a: apply_rope(a, cos, sin, interleaved, backend="triton"),
               lambda a: apply_rope_reference(a, cos, sin, interleaved), [part], g)


def test_rope_rotation_is_the_pairing_of_each_family():
    """A planted check of the pair layout, independent of the reference: rotating a unit vector by
    angle a at position 1 moves it within its pair only (halves: i, i+rot/2; GLM: 2i, 2i+1)."""
    S, hd = 2, 8
    for interleaved, pair in ((False, 4), (True, 1)):
        cos, sin = rope_tables(S, hd, 10000.0)
        x = torch.zeros(S, hd)
        x[1, 0] = 1.0
        out = apply_rope(x, cos, sin, interleaved, backend="triton")
        a = float(torch.atan2(sin[1, 0], cos[1, 0]))
        expect = torch.zeros(hd)
        expect[0], expect[pair] = torch.cos(torch.tensor(a)), torch.sin(torch.tensor(a))
        torch.testing.assert_close(out[1], expect)
        torch.testing.assert_close(out[0], torch.zeros(hd))


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu(seed, dtype):
    gate = (torch.randn(6, 50) * 4).to(dtype)
    up = torch.randn(6, 50).to(dtype)
    g = torch.randn(6, 50).to(dtype)
    _check("swiglu", dtype, lambda a, b: swiglu(a, b, backend="triton"), swiglu_reference, [gate, up], g)


def test_auto_keeps_the_torch_path_on_cpu():
    x, w = torch.randn(3, 8), torch.ones(8)
    assert torch.equal(rms_norm(x, w, 1e-5), rms_norm_reference(x, w, 1e-5))
    with pytest.raises(ValueError, match="swiglu: gate"):
        swiglu(x, x[:, :4])
    with pytest.raises(ValueError, match="apply_rope: cos/sin"):
        apply_rope(x, torch.ones(3, 5), torch.ones(3, 5), False)
    with pytest.raises(ValueError, match="needs cos/sin"):
        apply_rope(x, torch.ones(1, 3, 2), torch.ones(1, 3, 2), False, backend="triton")
