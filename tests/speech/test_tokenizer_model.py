"""Acceptance 2 (12.5 Hz frame rule) and the tokenizer's quantized path, on real LibriVox audio."""
import numpy as np
import pytest
import torch

from megaspeech.speech.asr import greedy_decode
from megaspeech.speech.audio import decode_audio, log_mel
from megaspeech.speech.tokenizer import (TokenizerConfig, build_tokenizer, decode_tokens_to_text, features,
                                         load_tokenizer, save_tokenizer, text_targets, tokenize_audios)
from megaspeech.speech.tokenizer_model import sample_codes
from megaspeech.speech.tokenizer_init import Teacher
from tests.helpers.speech_data import librivox_items


def _speech(seconds: float) -> np.ndarray:
    """Real speech, LibriVox utterances concatenated and cut to exactly `seconds`."""
    a = np.concatenate([decode_audio(p) for p, _ in librivox_items()])
    n = int(round(seconds * 16000))
    assert a.shape[0] >= n
    return a[:n]


def test_ten_seconds_is_125_tokens_and_batch_independent(whisper):
    torch.manual_seed(0)
    model, _ = build_tokenizer(TokenizerConfig(split_layer=2, codebook_size=64), whisper)
    model.eval()
    a10, a_long, a3 = _speech(10.0), _speech(10.0 + 1 / 16000), _speech(3.0)
    codes = tokenize_audios(model, [a10, a_long, a3])
    assert [len(c) for c in codes] == [125, 126, 38]  # ceil(samples / 1280)
    assert all(c.dtype == np.int64 and c.min() >= 0 and c.max() < 64 for c in codes)
    # the 3 s utterance alone gets the codes it got next to 10 s ones (padding is masked out)
    alone = tokenize_audios(model, [a3])[0]
    np.testing.assert_array_equal(alone, codes[2])
    pooled_b, keep = model.pooled(*features([a3, a10]))
    pooled_1, _ = model.pooled(*features([a3]))
    assert keep.sum(1).tolist() == [38, 125]
    torch.testing.assert_close(pooled_b[0, :38], pooled_1[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("code_dim,position_free", [(None, False), (8, False), (8, True)])
def test_quantized_path_equals_continuous_when_codebook_holds_the_features(whisper, tmp_path, code_dim,
                                                                           position_free):
    (path, text), = librivox_items()[1:2]
    a = decode_audio(path)
    cfg = TokenizerConfig(split_layer=3, codebook_size=38, code_dim=code_dim, position_free=position_free)
    model, _ = build_tokenizer(cfg, whisper)
    model.eval()
    feats, n_tok = features([a])
    assert n_tok.tolist() == [38]
    pooled, keep = model.pooled(feats, n_tok)
    pos = model.positions(keep)
    model.init_projection(pooled[keep], pos)
    with torch.no_grad():
        model.init_codebook(model.code_input(pooled[keep], pos), torch.Generator().manual_seed(0))  # a code per frame
    codes = tokenize_audios(model, [a])
    assert sorted(codes[0].tolist()) == sorted(set(codes[0].tolist()))  # distinct frames, distinct codes
    with torch.no_grad():
        cont = greedy_decode(whisper, *model.post(model.unquantized(pooled), keep))
    via_codes = decode_tokens_to_text(model, whisper, codes)
    assert via_codes == [whisper.decode_text(cont[0])]
    assert len(via_codes[0].split()) >= (3 if code_dim is None else 1)  # an untrained 8-dim bottleneck loses words
    # save / load round trip keeps codes and text
    save_tokenizer(tmp_path / "tok", model, cfg, whisper)
    m2, w2, cfg2 = load_tokenizer(tmp_path / "tok")
    assert cfg2 == cfg
    np.testing.assert_array_equal(tokenize_audios(m2, [a])[0], codes[0])
    assert decode_tokens_to_text(m2, w2, codes) == via_codes


def test_training_step_sends_asr_gradient_through_the_bottleneck(whisper):
    torch.manual_seed(0)
    cfg = TokenizerConfig(split_layer=2, codebook_size=16)
    model, _ = build_tokenizer(cfg, whisper)
    model.train()
    items = librivox_items()[1:3]
    feats, n_tok = features([decode_audio(p) for p, _ in items])
    text_in, text_out = text_targets(whisper, [t for _, t in items])
    before = model.vq.codebook.clone()
    loss, logs, codes, keep = model(feats, n_tok, text_in, text_out)
    loss.backward()
    assert logs["commit"] > 0 and np.isfinite(logs["ce"])
    # straight-through: the ASR loss reaches the layers below the VQ
    assert model.pre_layers[0].fc1.weight.grad.abs().sum() > 0
    assert model.post_layers[0].fc1.weight.grad.abs().sum() > 0
    assert not torch.equal(before, model.vq.codebook)  # EMA update in train mode
    assert model.vq.codebook.grad is None
    assert keep.sum().item() == n_tok.sum().item()


def test_untranscribed_rows_get_no_asr_loss(whisper):
    """A row without a transcript (None -> targets all -100) adds no CE: the mixed batch's CE and its
    gradient equal the transcribed row's alone; a batch without any transcript has no CE term."""
    torch.manual_seed(0)
    model, _ = build_tokenizer(TokenizerConfig(split_layer=2, codebook_size=16), whisper)
    model.eval()  # no EMA update: the same codebook for every call
    items = librivox_items()[1:3]
    pooled, keep = model.pooled(*features([decode_audio(p) for p, _ in items]))
    pooled = pooled.detach()
    text = items[0][1]
    text_in, text_out = text_targets(whisper, [text, None])
    assert (text_out[1] == -100).all() and (text_out[0] != -100).any()
    one_in, one_out = text_targets(whisper, [text])
    torch.testing.assert_close(text_out[0, :one_out.shape[1]], one_out[0], rtol=0, atol=0)

    def ce_and_grad(pooled, keep, t_in, t_out):
        model.zero_grad(set_to_none=True)
        loss, logs, _, _ = model.forward_pooled(pooled, keep, t_in, t_out)
        (loss - logs["commit"]).backward() if "ce" in logs else None
        return logs.get("ce"), model.post_layers[0].fc1.weight.grad

    try:
        ce_mix, g_mix = ce_and_grad(pooled, keep, text_in, text_out)
        n0 = int(keep[0].sum())
        ce_one, g_one = ce_and_grad(pooled[:1, :n0], keep[:1, :n0], one_in, one_out)
        assert ce_mix == pytest.approx(ce_one, rel=1e-5)
        torch.testing.assert_close(g_mix, g_one, rtol=1e-3, atol=1e-5)  # padding: summation order
        none_in, none_out = text_targets(whisper, [None, None])
        loss, logs, _, _ = model.forward_pooled(pooled, keep, none_in, none_out)
        assert "ce" not in logs and torch.isfinite(loss)
    finally:
        model.zero_grad(set_to_none=True)


def test_unpool_repeat_keeps_codes_and_reads_50hz_and_distills(whisper):
    """unpool=repeat: codes still follow the 12.5 Hz rule; the layers above the VQ read 4 frames per
    code (masked past each utterance, batch independent); the quantized path equals the continuous
    one when the codebook holds the pooled frames; the distillation loss trains only those layers."""
    torch.manual_seed(0)
    items = librivox_items()[1:3]
    auds = [decode_audio(p) for p, _ in items]
    model, _ = build_tokenizer(TokenizerConfig(split_layer=3, codebook_size=256, unpool="repeat"), whisper)
    model.eval()
    feats, n_tok = features(auds)
    pooled, keep = model.pooled(feats, n_tok)
    assert int(keep.sum()) <= 256
    model.init_codebook(torch.cat([pooled[keep]] * 4), torch.Generator().manual_seed(0))
    model.vq.embed[:int(keep.sum())] = pooled[keep]  # every real frame is its own code
    codes = tokenize_audios(model, auds)
    assert [len(c) for c in codes] == n_tok.tolist()
    enc_q, keep_q = model.codes_to_encoder_states([torch.from_numpy(c) for c in codes])
    enc_c, keep_c = model.post(pooled, keep)
    assert enc_c.shape[:2] == keep_c.shape == (2, 1500) and bool(keep_c.all())  # Whisper's 30 s layout
    torch.testing.assert_close(enc_q, enc_c, rtol=0, atol=1e-4)
    # each utterance reads its own 4 T frames then the silence tail: alone == batched
    short = int(n_tok.argmin())
    enc_1, _ = model.post(pooled[short:short + 1, :int(n_tok[short])], keep[short:short + 1, :int(n_tok[short])])
    torch.testing.assert_close(enc_1[0], enc_c[short], rtol=0, atol=1e-4)
    # distillation against the original 30 s encoder: gradient reaches the post-VQ layers only
    mel30 = torch.from_numpy(np.stack([log_mel(a) for a in auds]))
    teacher = Teacher(whisper)(auds)
    with torch.no_grad():
        torch.testing.assert_close(teacher, whisper.model.model.encoder(mel30).last_hidden_state,
                                   rtol=0, atol=1e-4)
    assert teacher.shape == enc_c.shape
    model.train()
    model.zero_grad(set_to_none=True)  # the session's Whisper is shared with other tests
    model.decoder.requires_grad_(False)
    try:
        loss, logs, _, _ = model.forward_pooled(pooled, keep, None, None, teacher, asr_weight=0.0,
                                                distill_weight=1.0)
        loss.backward()
        assert logs["distill"] > 0 and "ce" not in logs
        assert model.post_layers[0].fc1.weight.grad.abs().sum() > 0
        assert all(p.grad is None for p in model.decoder.parameters())
    finally:
        model.decoder.requires_grad_(True)
        model.zero_grad(set_to_none=True)


def test_position_free_offsets_start_at_the_per_position_means(whisper):
    """vq_pos[t] = mean code input at token position t, shrunk by 16 pseudo-frames to the overall mean;
    code_output(code_input(x)) is the plain bottleneck (the offset cancels)."""
    model, _ = build_tokenizer(TokenizerConfig(split_layer=2, codebook_size=16, code_dim=6, position_free=True), whisper)
    with torch.no_grad():
        pooled, keep = model.pooled(*features([decode_audio(p) for p, _ in librivox_items()]))
        x, pos = pooled[keep], model.positions(keep)
        assert pos.tolist() == [t for row in keep.tolist() for t, k in enumerate(row) if k]
        with pytest.raises(ValueError, match="positions"):
            model.init_projection(x)
        model.init_projection(x, pos)
        z = model.vq_in(x).double()
        for t in (0, 5, int(pos.max())):
            at = z[pos == t]
            want = (at.sum(0) + 16 * z.mean(0)) / (len(at) + 16)
            torch.testing.assert_close(model.vq_pos[t].double(), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.code_output(model.code_input(x, pos), pos), model.unquantized(x),
                                   rtol=1e-5, atol=1e-5)
        assert model.vq_pos.requires_grad and model.vq_pos.shape == (375, 6)


def test_factorized_codes_start_from_the_pca_bottleneck(whisper):
    """code_dim: vq_out(vq_in(x)) is the rank-code_dim PCA reconstruction of the pooled features."""
    model, _ = build_tokenizer(TokenizerConfig(split_layer=2, codebook_size=16, code_dim=6), whisper)
    items = librivox_items()
    with torch.no_grad():
        pooled, keep = model.pooled(*features([decode_audio(p) for p, _ in items]))
        x = pooled[keep]
        model.init_projection(x)
        got = model.unquantized(x)
    xd = x.double()
    mu = xd.mean(0)
    _, _, vh = torch.linalg.svd(xd - mu, full_matrices=False)
    ref = (xd - mu) @ vh[:6].T @ vh[:6] + mu
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)
    assert model.vq.codebook.shape == (16, 6)
    assert (got - x).square().mean() < (mu - x).square().mean()  # keeps part of the variance


def test_sampled_codes_follow_their_distance_law():
    """Codes at squared distances 1, 1.25, 2 and 10 from the row: with temperature T each is drawn with
    probability proportional to exp(-(d - 1) / T) among the k nearest, reproducibly per generator;
    a tiny temperature is the nearest code."""
    z = torch.zeros(20000, 2)
    codebook = torch.tensor([[1.0, 0.0], [0.0, 1.25 ** 0.5], [-(2 ** 0.5), 0.0], [0.0, -(10 ** 0.5)]])
    for T, k in [(0.25, 8), (0.5, 3)]:
        got = sample_codes(z, codebook, T, torch.Generator().manual_seed(0), k=k)
        freq = torch.bincount(got, minlength=4).float() / len(got)
        want = torch.exp(-(torch.tensor([1.0, 1.25, 2.0, 10.0])[:k] - 1) / T)
        want = torch.cat([want / want.sum(), torch.zeros(max(0, 4 - k))])
        torch.testing.assert_close(freq, want, rtol=0, atol=0.012)
        assert torch.equal(got, sample_codes(z, codebook, T, torch.Generator().manual_seed(0), k=k))
        assert not torch.equal(got, sample_codes(z, codebook, T, torch.Generator().manual_seed(1), k=k))
    assert (sample_codes(z[:100], codebook, 1e-4, torch.Generator().manual_seed(0)) == 0).all()


def test_code_temperature_changes_what_the_reader_reads_not_the_codebook(whisper):
    """With code_temperature the layers above read sampled codes (a different loss), while the returned
    codes, the commitment and the codebook's EMA step are those of the nearest codes."""
    torch.manual_seed(0)
    model, _ = build_tokenizer(TokenizerConfig(split_layer=3, codebook_size=64), whisper)
    items = librivox_items()[1:3]
    model.eval()
    with torch.no_grad():
        pooled, keep = model.pooled(*features([decode_audio(p) for p, _ in items]))
        model.init_codebook(pooled[keep], torch.Generator().manual_seed(0))
    text_in, text_out = text_targets(whisper, [t for _, t in items])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    runs = []
    for T in (0.0, 0.5):
        model.load_state_dict(state)
        model.train()
        with torch.no_grad():
            loss, logs, codes, _ = model.forward_pooled(pooled, keep, text_in, text_out, code_temperature=T,
                                                        generator=torch.Generator().manual_seed(0))
        runs.append((logs, codes, model.vq.codebook.clone()))
    (l0, c0, e0), (l1, c1, e1) = runs
    assert torch.equal(c0, c1) and torch.equal(e0, e1) and l0["commit"] == l1["commit"]
    assert l0["ce"] != l1["ce"]
