"""Whisper decoding: the KV-cached decoder equals recomputing the whole prefix, its scores equal a
teacher-forced rescoring, and the temperature fallback replaces a looping greedy text."""
import numpy as np
import torch

from megaspeech.speech.asr import Fallback, compression_ratio, decode, run_decoder, transcribe_tokens
from megaspeech.speech.audio import decode_audio, log_mel
from tests.helpers.speech_data import librivox_items


def _encode(whisper, audios):
    with torch.no_grad():
        return whisper.model.model.encoder(torch.from_numpy(np.stack([log_mel(a) for a in audios]))).last_hidden_state


def _tone(seconds=5.0):  # a steady 440 Hz tone: Whisper tiny.en's greedy decoder loops on it ("Aaaa...")
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(16000 * seconds)) / 16000)).astype(np.float32)


@torch.no_grad()
def _uncached_greedy_and_scores(whisper, enc, keep, max_new):
    """Reference: the whole prefix recomputed every step; then each text rescored teacher-forced."""
    meta, dec, proj = whisper.meta, whisper.model.model.decoder, whisper.model.proj_out
    ids = torch.tensor([whisper.prompt] * enc.shape[0])
    sup = torch.tensor(meta["suppress"])

    def logits_at(ids):
        lg = proj(run_decoder(dec, ids, enc, keep)).float()
        lg[:, :, sup] = -float("inf")
        lg[:, len(whisper.prompt) - 1, [meta["blank"], meta["eot"]]] = -float("inf")
        return lg
    for _ in range(max_new):
        ids = torch.cat([ids, logits_at(ids)[:, -1].argmax(-1)[:, None]], 1)
        if (ids == meta["eot"]).any(1).all():
            break
    lp = torch.log_softmax(logits_at(ids), -1)
    toks, means = [], []
    for b, row in enumerate(ids[:, len(whisper.prompt):].tolist()):
        n = row.index(meta["eot"]) + 1 if meta["eot"] in row else len(row)
        toks.append(row[:n - 1] if meta["eot"] in row else row)
        means.append(sum(float(lp[b, len(whisper.prompt) - 1 + j, row[j]]) for j in range(n)) / (len(toks[-1]) + 1))
    return toks, torch.tensor(means)


def test_cached_decode_equals_recompute_and_rescoring(whisper):
    audios = [decode_audio(p) for p, _ in librivox_items()[:2]] + [_tone()]
    enc = _encode(whisper, audios)
    keep = torch.ones(enc.shape[:2], dtype=torch.bool)
    keep[0, 1200:] = False  # a padded item: the cross-attention mask is honoured
    toks, lp = decode(whisper, enc, keep, max_new_tokens=40)
    ref_toks, ref_lp = _uncached_greedy_and_scores(whisper, enc, keep, 40)
    assert toks == ref_toks
    assert len(toks[2]) == 40  # the tone ran to the token limit
    torch.testing.assert_close(lp, ref_lp, atol=1e-4, rtol=0)


def test_fallback_replaces_a_looping_text_and_keeps_good_ones(whisper):
    real = decode_audio(librivox_items()[0][0])
    enc = _encode(whisper, [real, _tone()])
    greedy, _ = decode(whisper, enc, max_new_tokens=60)
    texts = [whisper.decode_text(t) for t in greedy]
    assert compression_ratio(texts[0]) < 2.4 and compression_ratio(texts[1]) > 2.4  # the planted loop
    fb = Fallback(log_prob_threshold=-float("inf"))  # compression alone decides
    out = transcribe_tokens(whisper, enc, max_new_tokens=60, fallback=fb)
    assert out[0] == greedy[0]  # passed at temperature 0: untouched
    assert out[1] != greedy[1]
    assert compression_ratio(whisper.decode_text(out[1])) <= 2.4
    assert transcribe_tokens(whisper, enc, max_new_tokens=60, fallback=fb) == out  # seeded: reproducible
    # an item's samples do not depend on its batch: alone, or after another item, the same text
    assert transcribe_tokens(whisper, enc[[1]], max_new_tokens=60, fallback=fb) == [out[1]]
    assert transcribe_tokens(whisper, enc[[1, 1]], max_new_tokens=60, fallback=fb) == [out[1], out[1]]
    assert transcribe_tokens(whisper, enc, max_new_tokens=60, fallback=None) == greedy


def test_compression_ratio():
    assert compression_ratio("the " * 50) > 2.4
    assert compression_ratio("He was not an ill-disposed young man, unless to be rather cold-hearted.") < 2.4
