"""CTC compression: reference gradcheck, Triton (interpreter) and torch paths against the
reference in values and gradients, edge lengths, dtypes, logits input."""
import pytest
import torch

from megaspeech.kernels.ctc_compress import ctc_compress, ctc_compress_reference

BACKENDS = ["triton", "torch"]
BLANK = 0


def _labels(b, t, v=4):
    """Runs of random length (1-4) with blank (0) frequent; sequence 1 is all blanks."""
    lab = torch.empty(b, t, dtype=torch.int64)
    for i in range(b):
        pos = 0
        while pos < t:
            n = int(torch.randint(1, 5, ()))
            lab[i, pos:pos + n] = 0 if torch.rand(()) < 0.35 else int(torch.randint(1, v, ()))
            pos += n
    if b > 1:
        lab[1] = BLANK
    return lab


def _lengths(b, t):
    """Full length, zero, and random lengths in between."""
    lens = torch.randint(0, t + 1, (b,))
    lens[0] = t
    if b > 2:
        lens[2] = 0
    return lens


def _run(backend, *args, **kw):
    if backend == "reference":
        return ctc_compress_reference(*args, **kw)
    return ctc_compress(*args, backend=backend, **kw)


@pytest.mark.parametrize("mode", ["remove_blank", "merge"])
@pytest.mark.parametrize("reduce", ["mean", "weighted"])
def test_reference_gradcheck(seed, mode, reduce):
    b, t, d = 3, 9, 3
    h = torch.randn(b, t, d, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(b, t, dtype=torch.float64) + 0.1).requires_grad_(reduce == "weighted")
    lab, lens = _labels(b, t), _lengths(b, t)
    inputs = (h, w) if reduce == "weighted" else (h,)

    def fn(h, *rest):
        return _run("reference", h, lab, lens, BLANK, mode, reduce, probs=rest[0] if rest else None)[0]

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradcheck(lambda *a: _run("torch", a[0], lab, lens, BLANK, mode, reduce,
                                                    probs=a[1] if len(a) > 1 else None)[0], inputs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["remove_blank", "merge"])
@pytest.mark.parametrize("reduce", ["mean", "weighted"])
def test_matches_reference_values_and_grads(seed, backend, mode, reduce):
    b, t, d = 4, 37, 70  # D over one 64-wide tile; T over nothing in particular
    h = torch.randn(b, t, d)
    lab, lens = _labels(b, t), _lengths(b, t)
    w = torch.rand(b, t) + 0.05 if reduce == "weighted" else None
    outs = {}
    for be in ("reference", backend):
        hh = h.clone().requires_grad_()
        ww = w.clone().requires_grad_() if w is not None else None
        out, new_len = _run(be, hh, lab, lens, BLANK, mode, reduce, probs=ww)
        if be == "reference":
            g = torch.randn_like(out)
        (out * g).sum().backward()
        outs[be] = (out.detach(), new_len, hh.grad, ww.grad if ww is not None else None)
    ref, got = outs["reference"], outs[backend]
    assert torch.equal(got[1], ref[1]) and got[0].shape == ref[0].shape
    assert ref[1][1] == (0 if mode == "remove_blank" else (1 if lens[1] > 0 else 0))
    assert ref[1][2] == 0
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[2], ref[2], rtol=1e-5, atol=1e-6)
    if reduce == "weighted":  # <g, h - out>: a sum of D terms of size ~1, so fp32 cancellation
        torch.testing.assert_close(got[3], ref[3], rtol=1e-4, atol=1e-4)
    for i, n in enumerate(ref[1].tolist()):  # padding rows are exactly zero
        assert torch.all(got[0][i, n:] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_input_weights_from_softmax(seed, backend):
    b, t, d, v = 3, 20, 33, 5
    h = torch.randn(b, t, d)
    logits = torch.randn(b, t, v)
    logits[..., BLANK] += 0.8
    lens = _lengths(b, t)
    grads = {}
    for be in ("reference", backend):
        hh, lg = h.clone().requires_grad_(), logits.clone().requires_grad_()
        out, new_len = _run(be, hh, lg, lens, BLANK, "remove_blank", "weighted")
        (out.square().sum()).backward()
        grads[be] = (out.detach(), new_len, hh.grad, lg.grad)
    ref, got = grads["reference"], grads[backend]
    assert torch.equal(got[1], ref[1])
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[2], ref[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[3], ref[3], rtol=1e-4, atol=1e-4)  # through softmax max
    lab = logits.argmax(-1)
    same = _run("reference", h, lab, lens, BLANK, "remove_blank", "weighted",
                probs=torch.softmax(logits, -1).amax(-1))
    torch.testing.assert_close(same[0], ref[0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision(seed, dtype, backend):
    b, t, d = 3, 25, 40
    h = torch.randn(b, t, d).to(dtype)
    lab, lens = _labels(b, t), _lengths(b, t)
    hh = h.clone().requires_grad_()
    out, _ = _run(backend, hh, lab, lens, BLANK, "merge", "mean")
    g = torch.randn_like(out)
    (out * g).sum().backward()
    h32 = h.float().requires_grad_()
    ref, _ = ctc_compress_reference(h32, lab, lens, BLANK, "merge", "mean")
    (ref * g.float()).sum().backward()
    assert out.dtype == dtype and hh.grad.dtype == dtype
    tol = {torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]  # one output rounding
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(hh.grad.float(), h32.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_blank_and_empty(seed, backend):
    h = torch.randn(2, 6, 5, requires_grad=True)
    lab = torch.zeros(2, 6, dtype=torch.int64)
    out, new_len = _run(backend, h, lab, torch.tensor([6, 3]), BLANK)
    assert out.shape == (2, 0, 5) and new_len.tolist() == [0, 0]
    out.sum().backward()
    assert torch.equal(h.grad, torch.zeros_like(h))
    out, new_len = _run(backend, h, lab, torch.tensor([6, 0]), BLANK, "merge")
    assert out.shape == (2, 1, 5) and new_len.tolist() == [1, 0]
    torch.testing.assert_close(out[0, 0], h[0].mean(0))
    assert torch.all(out[1] == 0)


def test_bad_input_is_refused():
    h = torch.zeros(2, 4, 3)
    lab = torch.zeros(2, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="lengths must lie"):
        ctc_compress(h, lab, torch.tensor([5, 1]), 0)
    with pytest.raises(ValueError, match="needs probs"):
        ctc_compress(h, lab, torch.tensor([4, 1]), 0, reduce="weighted")
    with pytest.raises(ValueError, match="labels must be"):
        ctc_compress(h, lab.float(), torch.tensor([4, 1]), 0)
    with pytest.raises(ValueError, match="mode"):
        ctc_compress(h, lab, torch.tensor([4, 1]), 0, mode="collapse")


@pytest.mark.parametrize("backend", BACKENDS)
def test_pad_to_input_is_the_same_function_at_length_t(seed, backend):
    """pad_to="input" (T' = T, the CUDA path's sync-free size): rows below max(new_len) equal
    the default's, every row past a sequence's new length is zero, gradients equal."""
    b, t, d = 4, 29, 70
    h, lab, lens = torch.randn(b, t, d), _labels(b, t), _lengths(b, t)
    w = torch.rand(b, t) + 0.05
    res = {}
    for pad in ("max", "input"):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        out, new_len = ctc_compress(hh, lab, lens, BLANK, reduce="weighted", probs=ww, backend=backend, pad_to=pad)
        g = torch.randn(b, t, d, generator=torch.Generator().manual_seed(1))[:, :out.shape[1]]
        (out * g).sum().backward()
        res[pad] = (out.detach(), new_len, hh.grad, ww.grad)
    tmax = res["max"][0].shape[1]
    assert res["input"][0].shape == (b, t, d) and tmax < t
    assert torch.equal(res["input"][1], res["max"][1])
    torch.testing.assert_close(res["input"][0][:, :tmax], res["max"][0], rtol=0, atol=0)
    assert torch.all(res["input"][0][:, tmax:] == 0)
    for i in (2, 3):
        torch.testing.assert_close(res["input"][i], res["max"][i], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="pad_to"):
        ctc_compress(h, lab, lens, BLANK, pad_to="longest")


def test_triton_path_never_reads_the_device(seed, monkeypatch):
    """The CUDA path's code with pad_to="input": no .item()/int()/bool()/tolist()/nonzero() on a
    tensor anywhere in the forward and backward (each would be a host synchronization on CUDA).
    Lengths validation on CPU tensors reads them, so this calls past `_prepare`."""
    import megaspeech.kernels.ctc_compress as cc
    b, t, d = 3, 21, 40
    h = torch.randn(b, t, d, requires_grad=True)
    w = (torch.rand(b, t) + 0.05).requires_grad_()
    lab, lens = _labels(b, t), _lengths(b, t)
    ref = ctc_compress(h, lab, lens, BLANK, reduce="weighted", probs=w, backend="triton", pad_to="input")[0]

    def boom(*a, **k):
        raise AssertionError("host synchronization in the Triton path")
    for name in ("item", "__int__", "__bool__", "__float__", "tolist", "nonzero", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    monkeypatch.setattr(torch, "nonzero", boom)
    out, _ = cc._CTCCompressTriton.apply(h, w, lab, lens, BLANK, "remove_blank", "input")
    (out * ref.detach()).sum().backward()
    monkeypatch.undo()
    torch.testing.assert_close(out.detach(), ref.detach())
