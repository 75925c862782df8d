"""The speech decoder (codes -> mel -> waveform): shapes at every tokenizer frame rate, exact resume of
its training, a planted signal (a tiny decoder trained on 3 utterances reproduces their mel), streaming
equal to whole-utterance synthesis, and a codebook mismatch refused at load."""
import numpy as np
import pytest
import torch

from megaspeech.config.speech_decoding import (CodeToMelConfig, SpeechDecoderRunConfig, SpeechDecoderTrainConfig,
                                              SpeechDecoderTrainingConfig, VocoderConfig)
from megaspeech.data.shards import ShardWriter
from megaspeech.speech.audio import POOLS, encode_flac, num_tokens, samples_per_token
from megaspeech.speech.decoder_mel import frames_per_code, log_mel
from megaspeech.speech.decoder_model import CodeToMel
from megaspeech.speech.decoder_training import SpeechDecoderTrainer
from megaspeech.speech.speech_decoder import SpeechDecoder, load_speech_decoder, save_speech_decoder
from megaspeech.speech.tokenizer import TokenizerConfig, build_tokenizer, features, tokenize_audios
from megaspeech.speech.tokenizer_init import init_bottleneck
from megaspeech.speech.tts import synthesize
from megaspeech.speech.vocoder import Vocoder

TEXTS = ("the quick brown fox jumps over the lazy dog", "she sells sea shells by the sea shore",
         "seven silver spoons lie on the table")
TINY = dict(dim=32, code_layers=1, mel_layers=2, kernel=5, flow_layers=1, flow_steps=2)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (the trainer's train.threads=1), restored after: tiny models run fastest so."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def audios():
    return [synthesize(t, "espeak:en-us") for t in TEXTS]


@pytest.fixture(scope="module")
def shards(audios, tmp_path_factory):
    out = tmp_path_factory.mktemp("dec") / "train"
    with ShardWriter(out, "audio", None) as w:
        for i, (a, t) in enumerate(zip(audios, TEXTS)):
            w.write(f"utt{i}", {"audio.flac": encode_flac(a), "transcript": t, "duration": len(a) / 16000,
                                     "doc": f"test/utt{i}"})
    return out


@pytest.fixture(scope="module")
def tokenizer(whisper, audios):
    """A real tokenizer, untrained above its first Whisper layer, its 32 codes set from these utterances."""
    model, _ = build_tokenizer(TokenizerConfig(split_layer=1, codebook_size=32, pool=4), whisper)
    with torch.no_grad():
        pooled, keep = model.pooled(*features(audios, 80, 4))
        init_bottleneck(model, pooled[keep], model.positions(keep), 0, 0)
    return model.eval()


def _cfg(tmp, shards, objective="regression", steps=4, **train):
    return SpeechDecoderTrainingConfig(
        run=SpeechDecoderRunConfig(dir=str(tmp), seed=7), model=CodeToMelConfig(objective=objective, **TINY),
        vocoder=VocoderConfig(dim=32, layers=2, kernel=5),
        train=SpeechDecoderTrainConfig(data=str(shards), steps=steps, batch_size=2, crop_codes=8,
                                       vocoder_seconds=0.3, warmup_steps=2, checkpoint_every=1000, log_every=2, threads=1,
                                       **train))


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_shapes_at_every_tokenizer_frame_rate(pool):
    rate = POOLS[pool]
    fpc = frames_per_code(rate)
    assert fpc == {1: 2, 2: 4, 4: 8, 8: 16}[pool]
    torch.manual_seed(0)
    dec = SpeechDecoder(CodeToMel(CodeToMelConfig(**TINY), 16, fpc), Vocoder(VocoderConfig(dim=16, layers=1)), rate)
    n = 16000 + 123  # 1.0077 s of audio -> its tokens -> audio covering it, whole tokens
    T = num_tokens(n, pool)
    codes = np.arange(T) % 16
    mel = dec.codes_to_mel(codes)
    wave = dec.synthesize(codes)
    assert mel.shape == (80, T * fpc) and mel.dtype == np.float32
    assert wave.shape == (T * samples_per_token(pool),) and wave.dtype == np.float32 and wave.shape[0] >= n
    assert np.array_equal(dec.mel_to_wave(mel), wave)
    with pytest.raises(ValueError, match="raw codes in \\[0, 16\\)"):
        dec.synthesize(np.array([3, 16]))


def test_unsupported_frame_rate_is_refused():
    with pytest.raises(ValueError, match="pool 1, 2, 4 or 8"):
        frames_per_code(12.0)


@pytest.mark.parametrize("objective", ["regression", "flow"])
def test_stream_chunks_concatenate_to_synthesize(objective):
    torch.manual_seed(1)
    dec = SpeechDecoder(CodeToMel(CodeToMelConfig(objective=objective, **TINY), 16, 8),
                        Vocoder(VocoderConfig(dim=16, layers=2)), 12.5)
    codes = (np.arange(57) * 7) % 16
    chunks = list(dec.stream(iter(codes.tolist()), block=10))
    assert len(chunks) >= 3  # audio came out before the last code
    assert sum(len(c) for c in chunks[:-1]) > 0
    np.testing.assert_allclose(np.concatenate(chunks), dec.synthesize(codes), atol=1e-5, rtol=0)


def test_exact_resume(tmp_path, shards, tokenizer):
    """Train 2 steps, checkpoint, continue in a new trainer to 4 = 4 uninterrupted steps, bit for bit
    (flow objective: its noise and times must resume too)."""
    full = SpeechDecoderTrainer(_cfg(tmp_path / "a", shards, "flow"), log=lambda s: None, tokenizer=tokenizer)
    full.resume()
    full.run()
    first = SpeechDecoderTrainer(_cfg(tmp_path / "b", shards, "flow"), log=lambda s: None, tokenizer=tokenizer)
    first.resume()
    first.train_step()
    first.train_step()
    first.save()
    lines = []
    second = SpeechDecoderTrainer(_cfg(tmp_path / "b", shards, "flow"), log=lines.append, tokenizer=tokenizer)
    assert second.resume() and second.step == 2
    second.run()
    assert any(" ETA " in s for s in lines)
    for name in ("code_to_mel", "vocoder", "optim_c", "optim_v"):
        a, b = full.state_dict()[name], second.state_dict()[name]
        flat_a = a["state"] if "state" in a else a
        flat_b = b["state"] if "state" in b else b
        for k in flat_a:
            va, vb = flat_a[k], flat_b[k]
            for x, y in (zip(va.values(), vb.values()) if isinstance(va, dict) else [(va, vb)]):
                assert torch.equal(torch.as_tensor(x), torch.as_tensor(y)), (name, k)
    dec = load_speech_decoder(tmp_path / "b" / "decoder", codebook_size=32)
    assert dec.frame_rate == 12.5 and dec.code_to_mel.cfg.objective == "flow"


def test_planted_signal_trained_decoder_reproduces_its_utterances(tmp_path, shards, tokenizer, audios):
    """80 fast steps on 3 utterances: the predicted log-mel of their codes is far closer to their true
    log-mel than an untrained decoder's (with the same mel statistics, no code templates); the templates
    the trainer sets before step 0 are already closer, and training improves on them."""
    import copy
    cfg = _cfg(tmp_path, shards, steps=80, lr=1e-2, vocoder_lr=5e-3)
    cfg.train.batch_size, cfg.train.crop_codes = 3, 64
    tr = SpeechDecoderTrainer(cfg, log=lambda s: None, tokenizer=tokenizer)
    tr.resume()
    codes = tokenize_audios(tokenizer, audios)
    bare = copy.deepcopy(tr.c2m)
    with torch.no_grad():
        bare.template.weight.zero_()

    def distance(c2m):
        dec = SpeechDecoder(c2m, tr.voc, 12.5)
        return float(np.mean([np.abs(dec.codes_to_mel(c) - log_mel(a, len(c) * 8).numpy()).mean()
                              for c, a in zip(codes, audios)]))
    untrained, templates = distance(bare), distance(tr.c2m)
    tr.run()
    after = distance(load_speech_decoder(tmp_path / "decoder").code_to_mel)
    assert templates < 0.8 * untrained and after < templates and after < 0.5 * untrained and after < 1.0, \
        (untrained, templates, after)


def test_code_templates_are_each_codes_mean_normalised_mel():
    """set_templates: code k's row is the mean of the (normalised) frames of every place code k occurs;
    a code never seen gets the mean of all frames; the model's output at initialisation is that table."""
    torch.manual_seed(0)
    c2m = CodeToMel(CodeToMelConfig(**TINY), 6, 2, 3).eval()
    c2m.mel_mean.fill_(1.5)
    c2m.mel_std.fill_(2.0)
    codes = [torch.tensor([0, 1, 0]), torch.tensor([1, 4])]
    mels = [torch.randn(3, 6), torch.randn(3, 4)]
    assert c2m.set_templates(zip(codes, mels)) == 3
    frames = lambda u, t: ((mels[u][:, 2 * t:2 * t + 2] - 1.5) / 2.0).T.reshape(-1)  # noqa: E731
    table = c2m.template.weight.detach()
    torch.testing.assert_close(table[0], (frames(0, 0) + frames(0, 2)) / 2)
    torch.testing.assert_close(table[1], (frames(0, 1) + frames(1, 0)) / 2)
    torch.testing.assert_close(table[4], frames(1, 1))
    every = torch.stack([frames(0, 0), frames(0, 1), frames(0, 2), frames(1, 0), frames(1, 1)]).mean(0)
    for k in (2, 3, 5):
        torch.testing.assert_close(table[k], every)
    with torch.no_grad():
        _, mu = c2m.condition(torch.tensor([[4, 2]]))
    torch.testing.assert_close(mu[0], torch.cat([table[4], table[2]]).reshape(4, 3))


def test_load_refuses_a_mismatched_codebook(tmp_path):
    c2m = CodeToMel(CodeToMelConfig(**TINY), 32, 8)
    voc = Vocoder(VocoderConfig(dim=16, layers=1))
    with pytest.raises(ValueError, match="codebook of 32 codes, but the tokenizer has 4096"):
        save_speech_decoder(tmp_path / "d", c2m, voc, 12.5, codebook_size=4096)
    save_speech_decoder(tmp_path / "d", c2m, voc, 12.5, codebook_size=32)
    with pytest.raises(ValueError, match="codebook of 32 codes, but the tokenizer has 4096"):
        load_speech_decoder(tmp_path / "d", codebook_size=4096)
    with pytest.raises(FileNotFoundError, match="no decoder.json"):
        load_speech_decoder(tmp_path)
    assert load_speech_decoder(tmp_path / "d", vocoder="griffin_lim").synthesize(np.array([1, 2])).shape == (2560,)


def test_phase_losses_are_blind_to_whole_turns_and_see_a_shift(audios):
    """APNet's anti-wrapping losses: a phase 2 pi k off (k per bin) costs nothing; a constant pi shift
    costs pi in the instantaneous phase term alone (differences along time and frequency are unchanged)."""
    from megaspeech.speech.decoder_mel import stft
    from megaspeech.speech.vocoder import phase_losses
    true = stft(torch.from_numpy(audios[0][:16000]))[None].angle()
    turns = 2 * torch.pi * torch.randint(-3, 4, true.shape).float()
    assert phase_losses(true + turns, true).item() < 1e-4
    np.testing.assert_allclose(phase_losses(true + torch.pi / 2, true).item(), torch.pi / 2, atol=1e-4)


def test_vocoder_refinement_makes_its_spectrum_consistent(audios):
    """refine_iters consistency projections bring the output's STFT magnitude closer to the predicted one
    (the network alone, untrained, predicts an inconsistent spectrum); the true phase is a fixed point."""
    from megaspeech.speech.decoder_mel import HOP, consistent_phase, istft, stft
    torch.manual_seed(0)
    voc = Vocoder(VocoderConfig(dim=16, layers=1)).eval()
    mel = log_mel(audios[0])[None, :, :100]
    with torch.no_grad():
        logmag, _ = voc.spectrum(mel)
        target = torch.exp(logmag)[..., :100]
        gap = {k: (stft(voc(mel, refine_iters=k)).abs()[..., :100] - target).abs().mean().item() for k in (0, 16)}
    assert gap[16] < 0.7 * gap[0], gap
    a = torch.from_numpy(audios[0][:100 * HOP])
    spec = stft(a)
    again = istft(spec.abs() * consistent_phase(spec.abs(), spec / spec.abs().clamp_min(1e-16), len(a), 8), len(a))
    np.testing.assert_allclose(again.numpy(), a.numpy(), atol=1e-3)
