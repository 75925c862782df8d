"""Acceptance 1: the CTranslate2 -> transformers conversion reproduces faster-whisper."""
import numpy as np
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
