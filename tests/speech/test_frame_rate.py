"""tokenizer.pool is the frame rate (50 / 25 / 12.5 / 6.25 Hz): the token count rule, batch
independence and the quantized reading path hold at every rate, on real LibriVox speech."""
import math

import numpy as np
import pytest
import torch

from megaspeech.config.load import ConfigError
from megaspeech.speech.asr import greedy_decode
from megaspeech.speech.audio import AudioError, decode_audio, max_token_samples
from megaspeech.speech.tokenizer import (TokenizerConfig, build_tokenizer, decode_tokens_to_text, features,
                                         tokenize_audios)
from tests.helpers.speech_data import librivox_items


@pytest.mark.parametrize("pool,hz", [(1, 50.0), (2, 25.0), (8, 6.25)])
def test_frame_rate_is_a_config_value(whisper, pool, hz):
    items = librivox_items()
    a, b = decode_audio(items[1][0]), decode_audio(items[0][0])[:int(2.3 * 16000)]
    cfg = TokenizerConfig(split_layer=3, codebook_size=512, pool=pool, unpool="repeat", code_dim=16)
    assert cfg.frame_rate == hz
    model, _ = build_tokenizer(cfg, whisper)
    model.eval()
    codes = tokenize_audios(model, [a, b])
    assert [len(c) for c in codes] == [math.ceil(len(x) / (320 * pool)) for x in (a, b)]
    np.testing.assert_array_equal(tokenize_audios(model, [b])[0], codes[1])  # padding masked at every rate
    # a codebook holding every frame of `a`: the codes read back (repeated x pool to 50 Hz) give the
    # same transcript as the continuous bottleneck
    feats, n_tok = features([a], 80, pool)
    pooled, keep = model.pooled(feats, n_tok)
    pos = model.positions(keep)
    model.init_projection(pooled[keep], pos)
    with torch.no_grad():
        x = model.code_input(pooled[keep], pos)
        model.vq.codebook[:x.shape[0]] = x  # exact frames as codes (512 >= frames at 50 Hz for this clip)
        model.vq.codebook[x.shape[0]:] = 1e3
        cont = greedy_decode(whisper, *model.post(model.unquantized(pooled), keep))
    codes = tokenize_audios(model, [a])
    assert codes[0].tolist() == list(range(len(codes[0])))
    assert decode_tokens_to_text(model, whisper, codes) == [whisper.decode_text(cont[0])]


def test_pool_values_and_longest_audio():
    with pytest.raises(ConfigError, match="tokenizer.pool"):
        TokenizerConfig(pool=3)
    assert max_token_samples(4) == 480000 and max_token_samples(8) == 187 * 2560
    with pytest.raises(AudioError, match="pool 8"):
        features([np.zeros(479000, np.float32)], 80, 8)
    assert features([np.zeros(478720, np.float32)], 80, 8)[1].tolist() == [187]
