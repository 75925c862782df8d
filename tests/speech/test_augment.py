"""Training-speech variety: every effect of the augmentation does what it says on planted signals,
draws are deterministic per (seed, epoch, item); the TTS corpus spans every espeak-ng accent x
variant, flite's voices and hibari, with pitch."""
import numpy as np
import pytest

from megaspeech.speech import augment as A
from megaspeech.speech.augment import AugmentConfig, augment
from megaspeech.speech.corpus import CorpusConfig, plan
from megaspeech.speech.tts import EVAL_VARIANTS, FLITE_ALL, all_voices, espeak_accents, espeak_variants, synthesize

SR = 16000


def _tone(hz, secs=2.0, amp=0.5):
    return (amp * np.sin(2 * np.pi * hz * np.arange(int(SR * secs)) / SR)).astype(np.float32)


def _peak_hz(x):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spec) * SR / len(x)


def _band_energy(x, lo, hi):
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.arange(len(spec)) * SR / len(x)
    return spec[(f >= lo) & (f < hi)].sum() / spec.sum()


def test_effects_on_planted_signals():
    x = _tone(1000)
    y = A.speed(x, 1.1)  # faster: shorter and higher, by ~the factor (fast FFT lengths: < 0.5% off)
    assert len(y) == pytest.approx(len(x) / 1.1, rel=5e-3)
    assert _peak_hz(y[1000:-1000]) == pytest.approx(1100, rel=5e-3)
    y = A.pitch_shift(_tone(440), 12.0)  # an octave up, same duration
    assert len(y) == 2 * SR and _peak_hz(y[2000:-2000]) == pytest.approx(880, abs=3)
    assert _peak_hz(A.pitch_shift(_tone(440), -3.0)[2000:-2000]) == pytest.approx(440 * 2 ** -0.25, abs=3)
    rng = np.random.default_rng(0)
    y = A.noise(x, 10.0, rng)  # SNR as asked
    assert 10 * np.log10(np.mean(x ** 2) / np.mean((y - x) ** 2)) == pytest.approx(10.0, abs=0.01)
    burst = np.concatenate([_tone(1000, 0.5), np.zeros(SR, np.float32)])
    y = A.reverb(burst, 0.6, rng)  # the room keeps ringing after the source stops
    tail = slice(int(0.55 * SR), int(0.75 * SR))
    assert len(y) == len(burst) and np.sqrt(np.mean(y[tail] ** 2)) > 0.01 and not burst[tail].any()
    chirp = sum(_tone(hz, 2.0, 0.1) for hz in (150, 1000, 2500, 5000, 7000))
    y = A.telephone(chirp)  # 300-3400 Hz kept, the rest gone
    assert len(y) == len(chirp) and _band_energy(y, 3900, 8000) < 1e-3 and _band_energy(y, 0, 200) < 0.02
    assert _band_energy(y, 900, 2600) > 0.9
    for fmt in ("MP3", "OGG"):
        y = A.codec(x, fmt, 0.9)
        assert len(y) == len(x) and np.abs(y).max() > 0.3 and _peak_hz(y) == pytest.approx(1000, abs=2)


def test_augment_is_deterministic_per_seed_epoch_item():
    from tests.helpers.speech_data import librivox_items
    from megaspeech.speech.audio import decode_audio
    x = decode_audio(librivox_items()[0][0])[:3 * SR]
    cfg = AugmentConfig(enabled=True, p_speed=1, p_pitch=1, p_reverb=1, p_noise=1, p_telephone=1, p_codec=1)
    a = augment(x, np.random.default_rng([1, 0, 5]), cfg)
    b = augment(x.copy(), np.random.default_rng([1, 0, 5]), cfg)
    c = augment(x, np.random.default_rng([1, 1, 5]), cfg)  # next epoch: another variant
    assert np.array_equal(a, b) and not np.array_equal(a[:len(c)], c[:len(a)])
    assert A.draw(np.random.default_rng([1, 0, 5]), cfg).keys() == set(A.EFFECTS)
    off = AugmentConfig(enabled=True, p_speed=0, p_pitch=0, p_reverb=0, p_noise=0, p_telephone=0, p_codec=0)
    assert np.array_equal(augment(x, np.random.default_rng(0), off), x)
    # the default mix draws each effect at about its probability
    plans = [A.draw(np.random.default_rng([0, 0, i]), AugmentConfig()) for i in range(2000)]
    assert np.mean(["speed" in p for p in plans]) == pytest.approx(0.5, abs=0.04)
    assert np.mean(["telephone" in p for p in plans]) == pytest.approx(0.15, abs=0.03)
    with pytest.raises(Exception, match="augment.p_noise"):
        AugmentConfig(p_noise=1.5)


def test_voices_span_every_espeak_variant_flite_and_hibari():
    accents, variants = espeak_accents(), espeak_variants()
    assert {"en-us", "en-gb", "en-gb-scotland", "en-029"} <= set(accents) and len(variants) >= 50
    assert not any(a.startswith("mb-") for a in accents)  # MBROLA voices need data not installed
    voices = all_voices("all")
    assert len(voices) == 1 + len(accents) * (1 + len(variants) - len(EVAL_VARIANTS)) + len(FLITE_ALL)
    assert not any(v.split("+")[-1] in EVAL_VARIANTS for v in voices)  # the eval suite's timbres stay unheard
    items = plan(CorpusConfig(utterances=600, voice_set="all", seed=1))
    used = {it["voice"] for it in items}
    assert len(used) > 250 and {f"flite:{v}" for v in FLITE_ALL} <= used and "hibari:heart" in used
    engines = [it["voice"].split(":")[0] for it in items]
    assert engines.count("flite") / 600 == pytest.approx(0.15, abs=0.04)
    assert engines.count("hibari") / 600 == pytest.approx(0.3, abs=0.05)
    assert {v.split(":")[1].split("+")[0] for v in used if v.startswith("espeak")} == set(accents)
    assert items == plan(CorpusConfig(utterances=600, voice_set="all", seed=1))
    pitches = [it["pitch"] for it in items]
    assert 0.6 <= min(pitches) < 0.7 and 1.4 < max(pitches) <= 1.5
    # a few voices really speak; espeak's pitch moves the voice's F0
    rng = np.random.default_rng(0)
    for v in [f"espeak:en-gb-scotland+{variants[int(rng.integers(len(variants)))]}", "flite:kal", "flite:rms"]:
        a = synthesize("The people of this country have a right to know.", v, 1.0)
        assert 1.5 < len(a) / SR < 6 and np.abs(a).max() > 0.05, v
    lo, hi = (synthesize("Hello there, how are you doing today?", "espeak:en-us", 1.0, pitch=p) for p in (0.6, 1.5))

    def f0(a):  # autocorrelation of the low-passed loudest 0.3 s: strongest lag in 2.5-16 ms
        from scipy.signal import butter, sosfilt
        a = sosfilt(butter(4, 500, fs=SR, output="sos"), a)
        i = int(np.argmax(np.convolve(a ** 2, np.ones(4800), "valid")))
        seg = a[i:i + 4800] - a[i:i + 4800].mean()
        ac = np.correlate(seg, seg, "full")[4799:]
        return SR / (40 + int(np.argmax(ac[40:256])))
    assert f0(hi) > 1.3 * f0(lo)
