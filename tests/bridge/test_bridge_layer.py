"""The CTC-compression bridge: equals its definition, learns unit runs from frames, feeds the LM."""
import pytest
import torch

from megaspeech.kernels.ctc_compress import ctc_compress_reference
from megaspeech.config.schema import ModelConfig
from megaspeech.bridge.layer import SpeechBridge, splice
from megaspeech.model.llm import DecoderLM
from megaspeech.parallel.layers import TorchLayers


def test_ctc_bridge_equals_reference_in_values_and_gradients():
    torch.manual_seed(0)
    bridge = SpeechBridge(16, 24, ctc_vocab=5, blank=0)
    with torch.no_grad():  # sharpen the head so there are runs of several frames
        bridge.ctc_head.weight.mul_(4)
    h = torch.randn(3, 40, 16, requires_grad=True)
    lengths = torch.tensor([40, 0, 23])
    out = bridge(h, lengths)

    h2 = h.detach().clone().requires_grad_()
    logits = bridge.ctc_head(h2)
    x, ref_len = ctc_compress_reference(h2, logits.argmax(-1), lengths, 0, reduce="weighted",
                                        probs=logits.softmax(-1).amax(-1))
    keep = torch.arange(x.shape[1])[None, :] < ref_len[:, None]
    ref = bridge.proj(x) * keep[..., None]
    assert torch.equal(out.lengths, ref_len) and int(ref_len[1]) == 0 and int(ref_len.max()) > 3
    torch.testing.assert_close(out.embeds, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(ref)
    (gh,) = torch.autograd.grad((out.embeds * g).sum(), h)
    (gh_ref,) = torch.autograd.grad((ref * g).sum(), h2)
    torch.testing.assert_close(gh, gh_ref, rtol=1e-5, atol=1e-6)


def _utterances(n, protos, sil, gen):
    """Frames: each unit a run of 2-5 noisy copies of its prototype, 0-3 silence frames between."""
    feats, targets = [], []
    for _ in range(n):
        units, frames, prev = [], [], -1
        for _ in range(int(torch.randint(4, 9, (), generator=gen))):
            u = int(torch.randint(1, len(protos), (), generator=gen))
            if u == prev:  # a repeated unit needs a silence between (CTC)
                frames += [sil] * 1
            units.append(u)
            frames += [protos[u]] * int(torch.randint(2, 6, (), generator=gen))
            frames += [sil] * int(torch.randint(0, 4, (), generator=gen))
            prev = u
        f = torch.stack(frames)
        feats.append(f + 0.3 * torch.randn(f.shape, generator=gen))
        targets.append(torch.tensor(units))
    return feats, targets


def _pad(seqs):
    lens = torch.tensor([len(s) for s in seqs])
    out = torch.zeros(len(seqs), int(lens.max()), *seqs[0].shape[1:], dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out, lens


def test_ctc_bridge_learns_one_vector_per_unit():
    """Trained on the CTC loss alone, the bridge compresses held-out utterances to exactly one
    vector per unit, each close to its unit's prototype (index 0 of the CTC vocabulary is blank)."""
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    d, n_units = 32, 10
    protos = torch.randn(n_units, d, generator=gen)
    sil = torch.randn(d, generator=gen)
    bridge = SpeechBridge(d, 8, ctc_vocab=n_units, blank=0)
    opt = torch.optim.Adam(bridge.parameters(), lr=3e-2)
    for _ in range(150):
        feats, targets = _utterances(16, protos, sil, gen)
        h, lens = _pad(feats)
        tgt, tlen = _pad(targets)
        loss = bridge.ctc_loss(bridge(h, lens), lens, tgt, tlen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    feats, targets = _utterances(32, protos, sil, gen)
    h, lens = _pad(feats)
    with torch.no_grad():
        out = bridge(h, lens)
        labels = out.ctc_logits.argmax(-1)
    exact = 0
    for i, t in enumerate(targets):
        lab = labels[i, :lens[i]]
        runs = lab[torch.cat([torch.tensor([True]), lab[1:] != lab[:-1]])]
        exact += torch.equal(runs[runs != 0], t) and int(out.lengths[i]) == len(t)
    assert exact >= 30, f"{exact}/32 utterances compressed to exactly their units"
    # the compressed vectors (before the projector) are the runs' means: near the prototypes
    from megaspeech.kernels.ctc_compress import ctc_compress
    x, _ = ctc_compress(h, labels, lens, 0)
    t0 = targets[0]
    cos = torch.nn.functional.cosine_similarity(x[0, :len(t0)], protos[t0], dim=1)
    assert cos.min() > 0.9, cos


def test_bridge_embeddings_feed_the_lm_and_gradients_reach_kept_frames_only():
    torch.manual_seed(0)
    cfg = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_heads=4, num_kv_heads=2)
    lm = DecoderLM(cfg, TorchLayers(), 64, seed=0)
    bridge = SpeechBridge(16, 32, ctc_vocab=6, blank=0)
    with torch.no_grad():
        bridge.ctc_head.weight.mul_(4)
    h = torch.randn(2, 30, 16, requires_grad=True)
    lens = torch.tensor([30, 17])
    text = torch.randint(0, 64, (2, 5))
    tlen = torch.tensor([5, 3])
    sp = bridge(h, lens)
    embeds, total = splice(sp, lm.embedding.embed(text), tlen)
    # contiguous [S, B, H]: on a transposed view torch.matmul copies every frozen weight per position
    assert embeds.shape == (int(total.max()), 2, 32) and embeds.is_contiguous()
    logits = lm(None, embeds=embeds)  # [S, B, V]
    assert logits.shape[:2] == (int(total.max()), 2)
    # sequence 1 alone (no padding in front of its text): same logits at its positions
    n1 = int(sp.lengths[1])
    alone = lm(None, embeds=torch.cat([sp.embeds[1, :n1], lm.embedding.embed(text[1, :3])])[:, None])
    torch.testing.assert_close(logits[:n1 + 3, 1], alone[:, 0], rtol=1e-5, atol=1e-5)
    logits[:, 1].sum().backward()
    labels = sp.ctc_logits.argmax(-1)[1]
    kept = (labels != 0) & (torch.arange(30) < 17)
    grad_norm = h.grad[1].abs().sum(-1)
    assert bool((grad_norm[kept] > 0).all()) and bool((grad_norm[~kept] == 0).all())
    assert bridge.ctc_head.weight.grad.abs().sum() > 0  # through the run weights


def test_conv_bridge_downsamples_by_its_stride():
    bridge = SpeechBridge(16, 32, kind="conv", stride=4)
    out = bridge(torch.randn(2, 50, 16), torch.tensor([50, 21]))
    assert out.embeds.shape == (2, 12, 32) and out.lengths.tolist() == [12, 5]
    assert out.embeds[1, 5:].abs().sum() == 0


def test_ctc_blank_init_sets_the_blank_probability_at_the_start():
    """bridge.ctc_blank_init: a 1,000-way head starts with the blank at the given probability (the
    frames' own contribution zero here), instead of ~1/V; out of range names the field."""
    torch.manual_seed(0)
    zero = torch.zeros(1, 5, 16)
    for p in (0.5, 0.9):
        bridge = SpeechBridge(16, 32, ctc_vocab=1000, blank=0, blank_init=p)
        blank = bridge.ctc_head(zero).softmax(-1)[..., 0]
        torch.testing.assert_close(blank, torch.full_like(blank, p), atol=0.02, rtol=0)
    plain = SpeechBridge(16, 32, ctc_vocab=1000, blank=0).ctc_head(zero).softmax(-1)[..., 0]
    assert float(plain.max()) < 0.01
    with pytest.raises(ValueError, match="ctc_blank_init"):
        SpeechBridge(16, 32, ctc_vocab=1000, blank=0, blank_init=1.0)
