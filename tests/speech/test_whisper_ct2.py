"""Acceptance 1: the CTranslate2 -> transformers conversion reproduces faster-whisper."""
import numpy as np
import pytest
import torch

from megaspeech.speech.asr import transcribe_base
from megaspeech.speech.audio import decode_audio, log_mel
from megaspeech.speech.whisper_ct2 import default_ct2_dir, load_whisper, read_ct2
from tests.helpers.speech_data import librivox_items


def test_encoder_and_greedy_text_match_faster_whisper(whisper):
    import ctranslate2
    from faster_whisper import WhisperModel

    fw = WhisperModel(str(default_ct2_dir()), device="cpu", compute_type="float32", cpu_threads=1)
    items = librivox_items()[:3]
    audios = [decode_audio(p) for p, _ in items]
    feats = np.stack([log_mel(a) for a in audios])
    with torch.no_grad():
        ours = whisper.model.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    ref = np.array(fw.model.encode(ctranslate2.StorageView.from_array(feats), to_cpu=True))
    assert ours.shape == ref.shape == (3, 1500, 384)
    for i, a in enumerate(audios):
        real = -(-a.shape[0] // 320)  # 50 Hz frames that hold real audio
        np.testing.assert_allclose(ours[i, :real], ref[i, :real], rtol=0, atol=1e-4)
    # Over the silent 30 s padding one frame/channel differs by up to ~8e-4 in some utterances
    # (always frame 1472, ch 354: an accumulation-order effect of the two GEMM libraries).
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-3)

    hyps = transcribe_base(whisper, audios)
    for a, h in zip(audios, hyps):
        segs, _ = fw.transcribe(a, beam_size=1, temperature=0.0, without_timestamps=True,
                                condition_on_previous_text=False)
        assert h == "".join(s.text for s in segs).strip()
    assert all(len(h.split()) >= 5 for h in hyps)


def test_reader_and_cache(whisper, whisper_cache, monkeypatch):
    v = read_ct2(default_ct2_dir() / "model.bin")
    assert v["decoder/projection/weight"] is v["decoder/embeddings/weight"]  # alias resolved
    qkv = v["encoder/layer_1/self_attention/linear_0/weight"].astype(np.float32)
    got = whisper.model.model.encoder.layers[1].self_attn.v_proj.weight.detach().numpy()
    np.testing.assert_array_equal(got, qkv[768:])
    assert whisper.model.proj_out.weight.data_ptr() == whisper.model.model.decoder.embed_tokens.weight.data_ptr()
    # a second load reads the save_pretrained cache and never converts again
    import megaspeech.speech.whisper_ct2 as mod
    monkeypatch.setattr(mod, "convert", lambda *a: (_ for _ in ()).throw(AssertionError("converted twice")))
    again = load_whisper(cache_dir=whisper_cache)
    for (k, a), b in zip(whisper.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert again.encode_text("he was not") == whisper.encode_text("he was not")
    assert whisper.decode_text(whisper.encode_text("He was not an ill disposed young man.")) == \
        "He was not an ill disposed young man."


def _fake_sources(tmp_path, monkeypatch):
    """Two CTranslate2 'model dirs' and a fast stand-in for convert (a 1-layer Whisper) that counts calls."""
    import megaspeech.speech.whisper_ct2 as mod
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    calls = []

    def fake_convert(ct2_dir):
        calls.append(mod.source_id(ct2_dir))
        d = 8 * len(calls)  # each conversion is told apart by its width
        cfg = WhisperConfig(vocab_size=64, d_model=d, encoder_layers=1, decoder_layers=1, encoder_attention_heads=1,
                            decoder_attention_heads=1, encoder_ffn_dim=d, decoder_ffn_dim=d, num_mel_bins=4,
                            max_source_positions=8, max_target_positions=8, pad_token_id=1,
                            bos_token_id=1, eos_token_id=1, decoder_start_token_id=2)
        return WhisperForConditionalGeneration(cfg).eval(), {"eot": 1, "sot": 2, "no_timestamps": 3,
                                                             "source": mod.source_id(ct2_dir)}
    monkeypatch.setattr(mod, "convert", fake_convert)
    monkeypatch.setenv("MEGASPEECH_CACHE", str(tmp_path / "cache"))
    srcs = []
    for name in ("whisper-tiny.en-ct2", "whisper-large-v3-ct2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tokenizer.json").symlink_to(default_ct2_dir() / "tokenizer.json")
        srcs.append(tmp_path / name)
    return srcs, calls


def test_cache_dir_is_per_source_and_a_cache_of_another_source_is_never_reused(tmp_path, monkeypatch):
    from megaspeech.speech.whisper_ct2 import META_FILE, cached_source, default_cache_dir, source_id
    (tiny, large), calls = _fake_sources(tmp_path, monkeypatch)
    assert default_cache_dir(tiny) != default_cache_dir(large)
    assert default_cache_dir(tiny) == default_cache_dir(tmp_path / "x" / ".." / tiny.name)  # one source, one cache
    assert "whisper-large-v3-ct2" in default_cache_dir(large).name
    # the large-v3 preset after a tiny.en run: each loads its own model from its own cache
    w_tiny, w_large = load_whisper(tiny), load_whisper(large)
    assert (w_tiny.model.config.d_model, w_large.model.config.d_model) == (8, 16)
    assert load_whisper(large).model.config.d_model == 16 and len(calls) == 2  # reused: same source
    assert cached_source(default_cache_dir(tiny)) == source_id(tiny)
    # one explicit cache dir given to two sources: the other source's cache is converted again, not reused
    shared = tmp_path / "shared"
    load_whisper(tiny, shared)
    assert load_whisper(large, shared).model.config.d_model == 32 and calls[-1] == source_id(large)
    assert cached_source(shared) == source_id(large) and len(calls) == 4
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name or ".old" in p.name]
    # a directory there that is no conversion of this source is never loaded
    (shared / META_FILE).unlink()
    (shared / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="give this model its own cache dir"):
        load_whisper(large, shared)
