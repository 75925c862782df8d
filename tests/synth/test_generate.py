"""KV-cache generation: logits equal the model's full forward (left-padded batches included), greedy
codes equal Hugging Face generate on the exported weights, length control and stop rules hold."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from megaspeech.config.schema import ModelConfig
from megaspeech.model.llm import DecoderLM
from megaspeech.parallel.layers import TorchLayers
from megaspeech.model.decode import KVCacheLM
from megaspeech.synth.generate import GenerationConfig, SpeechGenerator
from megaspeech.vocab import Vocab

VOCAB = Vocab(text_size=96, speech_size=40)


def tiny(family="llama", **kw) -> DecoderLM:
    m = ModelConfig(family=family, num_layers=2, hidden_size=64, ffn_hidden_size=96, num_heads=4, num_kv_heads=2,
                    rope_fraction=0.5 if family == "glm" else 1.0, qkv_bias=family == "glm", init_std=0.2, **kw)
    return DecoderLM(m, TorchLayers(), VOCAB.padded_size(16), seed=3).eval(), m


@pytest.mark.parametrize("family", ["llama", "glm"])
def test_cache_matches_full_forward_with_left_padding(family):
    model, _ = tiny(family)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, VOCAB.size, (n,), generator=g) for n in (9, 5, 7)]
    lm = KVCacheLM(model)
    n_prompt = [4, 2, 5]
    steps = 4
    logits = lm.prefill([s[:k] for s, k in zip(seqs, n_prompt)], max_new=steps)
    got = [logits]
    # feed each row's own continuation (rows shorter than needed repeat their last token)
    for j in range(steps):
        ids = torch.stack([s[min(k + j, len(s) - 1)] for s, k in zip(seqs, n_prompt)])
        got.append(lm.step(ids))
    with torch.no_grad():
        for i, (s, k) in enumerate(zip(seqs, n_prompt)):
            ids = torch.cat([s[:k], torch.stack([s[min(k + j, len(s) - 1)] for j in range(steps)])])
            ref = model(ids[None])[:, 0]  # [S, V]
            for j in range(steps + 1):
                torch.testing.assert_close(got[j][i], ref[k - 1 + j], rtol=1e-5, atol=1e-5)


def test_greedy_equals_hf_generate_and_length_rules():
    import transformers
    from megaspeech.model.hf import adapter_for
    model, m = tiny()
    cfg = GenerationConfig(batch_size=8)
    gen = SpeechGenerator(model, VOCAB, cfg)
    rng = np.random.default_rng(0)
    texts = [rng.integers(0, VOCAB.text_size, n) for n in (3, 6, 4)]
    fixed = 7
    ours = gen.generate_batch(texts, [2, 2, 2], torch.Generator(), fixed_len=fixed)
    assert [len(c) for c in ours] == [fixed] * 3
    ad = adapter_for(m)
    hf = transformers.LlamaForCausalLM(ad.hf_config(model.embedding.embed.weight.shape[0]))
    hf.load_state_dict(ad.to_hf(model.state_dict()), strict=False)
    hf.eval()
    allowed = torch.full((model.embedding.embed.weight.shape[0],), float("-inf"))
    allowed[VOCAB.speech_offset:VOCAB.special_offset] = 0  # codes only (fixed length: no stop)
    for t, c in zip(texts, ours):
        ids = gen.prompt(t)[None]
        out = hf.generate(ids, max_new_tokens=fixed, do_sample=False, logits_processor=[lambda i, s: s + allowed],
                          pad_token_id=VOCAB.pad_id, eos_token_id=None)
        np.testing.assert_array_equal(out[0, ids.shape[1]:].numpy() - VOCAB.speech_offset, c)

    # stop and length rules (random weights): every output within [min, max] of its word count
    free = gen.generate(texts * 3, [1, 4, 9] * 3, batch_id=5)
    for c, w in zip(free, [1, 4, 9] * 3):
        lo, hi = cfg.length_limits(w)
        assert lo <= len(c) <= hi and ((c >= 0) & (c < VOCAB.speech_size)).all()
    assert cfg.length_limits(10) == (15, 102)  # 12.5 codes/s, 2.5 words/s: 50 codes expected
    # batching does not change greedy results beyond float noise: one-by-one equals batched
    single = [gen.generate([t], [w])[0] for t, w in zip(texts * 3, [1, 4, 9] * 3)]
    assert all(np.array_equal(a, b) for a, b in zip(single, free))


def test_sampling_is_seeded_and_top_p_restricts():
    model, _ = tiny()
    texts = [np.arange(5) + i for i in range(4)]
    a = SpeechGenerator(model, VOCAB, GenerationConfig(temperature=1.0, top_p=0.9, seed=1)).generate(texts, [3] * 4, 2)
    b = SpeechGenerator(model, VOCAB, GenerationConfig(temperature=1.0, top_p=0.9, seed=1)).generate(texts, [3] * 4, 2)
    c = SpeechGenerator(model, VOCAB, GenerationConfig(temperature=1.0, top_p=0.9, seed=2)).generate(texts, [3] * 4, 2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    # top_p -> 0: only the arg-max survives, so sampling equals greedy
    g = SpeechGenerator(model, VOCAB, GenerationConfig()).generate(texts, [3] * 4)
    s = SpeechGenerator(model, VOCAB, GenerationConfig(temperature=1.0, top_p=1e-6, seed=4)).generate(texts, [3] * 4)
    assert all(np.array_equal(x, y) for x, y in zip(g, s))
