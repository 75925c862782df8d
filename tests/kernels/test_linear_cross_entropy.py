"""Fused linear + cross-entropy against the plain loss: values and gradients of hidden states and
head weight, at TP=1 (several chunkings, ignored tokens, fp32 and bf16) and TP=2 over gloo; and
LMLoss with a fused Head against LMLoss on logits for a whole DecoderLM."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from megaspeech.kernels.linear_cross_entropy import (IGNORE_INDEX, linear_cross_entropy,
                                          linear_cross_entropy_reference)


def _inputs(n, h, v, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    weight = (torch.randn(v, h, generator=g) * 0.5).to(dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::7] = IGNORE_INDEX
    tok_w = torch.rand(n, generator=g)
    tok_w[::5] = 0.0  # masked tokens
    return hidden, weight, labels, tok_w


def _run(fn, hidden, weight, labels, tok_w, grad_scale=1.7, **kw):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    loss, ce = fn(h, w, labels, tok_w, **kw)
    (loss * grad_scale).backward()  # a non-unit incoming gradient (e.g. fp16 loss scale)
    return loss.detach(), ce, h.grad, w.grad


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("chunk", [1, 13, 64, None])
def test_fp32_matches_plain_loss(seed, chunk, backend):
    inputs = _inputs(50, 24, 70, seed=seed)
    ref = _run(linear_cross_entropy_reference, *inputs)
    got = _run(linear_cross_entropy, *inputs, chunk_tokens=chunk, backend=backend)
    for name, a, b in zip(("loss", "ce", "grad_hidden", "grad_weight"), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    labels = inputs[2]
    assert (got[1][labels == IGNORE_INDEX] == 0).all()
    assert (got[2][inputs[3] == 0] == 0).all()  # a zero-weight token gets no gradient


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bf16_follows_the_plain_rule(seed, backend):
    """bf16 hidden/weight: logits from the bf16 matmul, then fp32 (the plain path's casts);
    gradients returned in bf16. Compared with the fp64 truth at bf16 tolerance, and no further
    from it than the plain bf16 path. The incoming gradient is a power of two here (as with
    gradient accumulation over 2^k micro-batches): the stored bf16 gradients are scaled in the
    backward, which for other factors costs one more rounding (half an ulp)."""
    inputs = _inputs(40, 32, 90, torch.bfloat16, seed)
    got = _run(linear_cross_entropy, *inputs, chunk_tokens=16, backend=backend, grad_scale=2.0)
    plain = _run(linear_cross_entropy_reference, *inputs, grad_scale=2.0)
    h64, w64 = inputs[0].double(), inputs[1].double()
    truth = _run(linear_cross_entropy_reference, h64, w64, *inputs[2:], grad_scale=2.0)
    assert got[2].dtype == got[3].dtype == torch.bfloat16
    torch.testing.assert_close(got[0].double(), truth[0].double(), rtol=2e-2, atol=1e-2)
    for i in (2, 3):
        err = (got[i].double() - truth[i]).abs().max()
        err_plain = (plain[i].double() - truth[i]).abs().max()
        assert err <= 1.5 * err_plain + 1e-4, (i, float(err), float(err_plain))


def test_no_grad_and_frozen_weight(seed):
    hidden, weight, labels, tok_w = _inputs(30, 16, 40, seed=seed)
    ref_loss, ref_ce = linear_cross_entropy_reference(hidden, weight, labels, tok_w)
    with torch.no_grad():
        loss, ce = linear_cross_entropy(hidden, weight, labels, tok_w, chunk_tokens=7)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(ce, ref_ce)
    h = hidden.clone().requires_grad_()  # frozen head (e.g. adapters): only d hidden
    loss, _ = linear_cross_entropy(h, weight, labels, tok_w, chunk_tokens=7)
    loss.backward()
    h2 = hidden.clone().requires_grad_()
    linear_cross_entropy_reference(h2, weight, labels, tok_w)[0].backward()
    torch.testing.assert_close(h.grad, h2.grad)


def test_bad_input_names_the_argument():
    hidden, weight, labels, tok_w = _inputs(10, 8, 12)
    with pytest.raises(ValueError, match="labels must be int"):
        linear_cross_entropy(hidden, weight, labels.float(), tok_w)
    with pytest.raises(ValueError, match=r"weight \[V, H\]"):
        linear_cross_entropy(hidden, weight[:, :4], labels, tok_w)
    with pytest.raises(ValueError, match="chunk_tokens"):
        linear_cross_entropy(hidden, weight, labels, tok_w, chunk_tokens=0)


def test_no_host_synchronization(seed, monkeypatch):
    """No .item()/int()/bool()/tolist()/nonzero() on a tensor in forward and backward: each would
    make a CUDA step wait for the device once per chunk."""
    inputs = _inputs(30, 16, 40, seed=seed)
    ref = _run(linear_cross_entropy, *inputs, chunk_tokens=7)

    def boom(*a, **k):
        raise AssertionError("host synchronization in the fused loss")
    for name in ("item", "__int__", "__bool__", "__float__", "tolist", "nonzero", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    monkeypatch.setattr(torch, "nonzero", boom)
    got = _run(linear_cross_entropy, *inputs, chunk_tokens=7)
    monkeypatch.undo()
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


# ---- TP=2 over gloo ---------------------------------------------------------------------------

def _tp2_worker(rank, port, seed, out):
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ps.initialize_model_parallel(tensor_model_parallel_size=2)
    try:
        hidden, weight, labels, tok_w = _inputs(45, 16, 64, seed=seed)
        shard = weight.chunk(2, 0)[rank]
        group = ps.get_tensor_model_parallel_group()
        res = {}
        for name, fn, kw in (("fused", linear_cross_entropy, {"chunk_tokens": 10}),
                             ("fused_triton", linear_cross_entropy, {"chunk_tokens": 10, "backend": "triton"}),
                             ("megatron", linear_cross_entropy_reference, {})):
            loss, ce, gh, gw = _run(fn, hidden, shard, labels, tok_w, tp_group=group, **kw)
            dist.all_reduce(gh)  # the head input's TP region all-reduces d hidden in the model
            res[name] = (loss, ce, gh, gw)
        torch.save(res, f"{out}/rank{rank}.pt")
    finally:
        ps.destroy_model_parallel()
        dist.destroy_process_group()


def test_tp2_vocab_parallel_matches_single_process(seed, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_tp2_worker, args=(port, seed, str(tmp_path)), nprocs=2)
    full = _run(linear_cross_entropy_reference, *_inputs(45, 16, 64, seed=seed))
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for r in range(2):
        for name in ("fused", "fused_triton", "megatron"):
            loss, ce, gh, gw = got[r][name]
            torch.testing.assert_close(loss, full[0], rtol=1e-5, atol=1e-5, msg=f"{name} loss")
            torch.testing.assert_close(ce, full[1], rtol=1e-5, atol=1e-5, msg=f"{name} ce")
            torch.testing.assert_close(gh, full[2], rtol=1e-5, atol=1e-5, msg=f"{name} grad hidden")
            torch.testing.assert_close(gw, full[3].chunk(2, 0)[r], rtol=1e-5, atol=1e-5,
                                       msg=f"{name} grad weight rank {r}")


# ---- wired into the model: Head + LMLoss ------------------------------------------------------

def test_lmloss_fused_head_equals_plain_logits(seed):
    from megaspeech.config.schema import ModelConfig
    from megaspeech.model.llm import DecoderLM
    from megaspeech.parallel.layers import TorchLayers
    from megaspeech.train.loss import LMLoss

    cfg = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_heads=4, num_kv_heads=2)
    B, S, V = 3, 11, 200
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, S), generator=g)
    labels = torch.randint(0, V, (B, S), generator=g)
    mask = (torch.rand(B, S, generator=g) > 0.3).float()
    modality = torch.randint(0, 2, (B, S), generator=g)
    res = {}
    for fused in (False, True):
        model = DecoderLM(cfg, TorchLayers(), V, seed=1)
        loss_fn = LMLoss(tp=1)
        if fused:
            loss_fn.bind_head(model.head, chunk_tokens=5)
        loss_fn.begin_step(float(mask.sum()) * 2, grad_accum=2, dp=1)
        for _ in range(2):  # two micro-batches: sums accumulate
            loss = loss_fn(model(ids), (labels, mask, modality))
            loss.backward()
        res[fused] = (loss.detach(), loss_fn.sums.clone(), {n: p.grad for n, p in model.named_parameters()})
    assert model(ids).shape == (S, B, cfg.hidden_size)  # fused Head: its matmul input
    torch.testing.assert_close(res[True][0], res[False][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res[True][1], res[False][1], rtol=1e-6, atol=1e-6)
    assert res[True][1][1::2].sum() == 2 * mask.sum()  # token counts per modality, both micro-batches
    for name, grad in res[False][2].items():
        torch.testing.assert_close(res[True][2][name], grad, rtol=1e-4, atol=1e-6, msg=name)
