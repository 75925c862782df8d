"""Text-to-token generation throughput: megaspeech's batched KV-cache generator vs Hugging Face
`generate` on the same weights exported to transformers (LlamaForCausalLM / GlmForCausalLM).

Both decode the same left-padded batch of TTS prompts (<|bos|> text <|begin_of_speech|>) greedily,
constrained to speech codes, for exactly --new-tokens codes each (no early stop, so the work is
identical), in one process. HF gets the constraint as a logits processor and its own KV cache.

    python benchmarks/text_to_token_throughput.py [--config configs/tiny.yaml] [--checkpoint RUN_DIR]
        [--batch 32] [--new-tokens 100] [--threads 2]

Prints speech tokens/s for both, the share of identical greedy codes, and `ratio=` (ours / HF) last.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def load_model(checkpoint: str | None, config: str):
    """(DecoderLM, its ModelConfig, Vocab, version): a trained checkpoint, or random weights of `config`."""
    from megaspeech.checkpoint.offline import load_decoder, read_meta, resolve
    from megaspeech.config.load import build, load_config
    from megaspeech.config.schema import ModelConfig, PretrainConfig
    from megaspeech.model.llm import DecoderLM
    from megaspeech.parallel.layers import TorchLayers
    if checkpoint:
        model, vocab, version = load_decoder(checkpoint)
        return model, build(ModelConfig, read_meta(resolve(checkpoint))["config"]["model"], "model"), vocab, version
    cfg = load_config(PretrainConfig, config)
    model = DecoderLM(cfg.model, TorchLayers(), cfg.padded_vocab_size(), seed=cfg.run.seed).eval()
    return model, cfg.model, cfg.vocab, f"random:{config}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml", help="model + vocab (random weights) if no --checkpoint")
    p.add_argument("--checkpoint", default=None, help="text-to-token run dir or checkpoint dir")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=100)
    p.add_argument("--prompt-words", type=int, default=12, help="mean text length (tokens) of the prompts")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs each, alternating (best is reported)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    import transformers

    from megaspeech.model.hf import adapter_for
    from megaspeech.synth.generate import GenerationConfig, SpeechGenerator

    model, mcfg, vocab, version = load_model(a.checkpoint, a.config)
    rows = model.embedding.embed.weight.shape[0]
    rng = np.random.default_rng(0)
    texts = [rng.integers(0, vocab.text_size, max(1, int(rng.integers(a.prompt_words // 2, a.prompt_words * 3 // 2 + 1))))
             for _ in range(a.batch)]
    gen = SpeechGenerator(model, vocab, GenerationConfig(batch_size=a.batch))

    ad = adapter_for(mcfg)
    hf_cls = getattr(transformers, ad.architecture)
    hf = hf_cls(ad.hf_config(rows)).eval()
    missing, unexpected = hf.load_state_dict(ad.to_hf(model.state_dict()), strict=False)
    assert not [k for k in missing if "o_proj.bias" not in k] and not unexpected, (missing, unexpected)
    prompts = [gen.prompt(t) for t in texts]
    T = max(len(x) for x in prompts)
    ids = torch.full((a.batch, T), vocab.pad_id, dtype=torch.long)
    att = torch.zeros(a.batch, T, dtype=torch.long)
    for i, x in enumerate(prompts):
        ids[i, T - len(x):], att[i, T - len(x):] = x, 1
    allowed = torch.full((rows,), float("-inf"))
    allowed[vocab.speech_offset:vocab.special_offset] = 0.0

    def run_ours():
        return gen.generate_batch(texts, [1] * a.batch, torch.Generator(), fixed_len=a.new_tokens)

    def run_hf():
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=att, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                              do_sample=False, logits_processor=[lambda i, s: s + allowed],
                              pad_token_id=vocab.pad_id, eos_token_id=None)
        return out[:, T:] - vocab.speech_offset

    # alternate the two (the machine may be shared): best of --repeats timed runs each, after a warm-up
    ours, theirs = run_ours(), run_hf()
    t_ours = t_hf = float("inf")
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        run_ours()
        t1 = time.perf_counter()
        run_hf()
        t2 = time.perf_counter()
        t_ours, t_hf = min(t_ours, t1 - t0), min(t_hf, t2 - t1)
    n = a.batch * a.new_tokens
    same = float(np.mean([np.mean(o == t.numpy()) for o, t in zip(ours, theirs)]))
    print(f"model={version} params={sum(p.numel() for p in model.parameters()) / 1e6:.1f}M batch={a.batch} "
          f"new_tokens={a.new_tokens} prompt_len<={T} threads={a.threads} transformers={transformers.__version__}")
    print(f"identical_greedy_codes={same:.4f}")
    print(f"megaspeech_kv_tokens_per_s={n / t_ours:.1f}")
    print(f"hf_generate_tokens_per_s={n / t_hf:.1f}")
    print(f"ratio={t_hf / t_ours:.2f}")


if __name__ == "__main__":
    main()
