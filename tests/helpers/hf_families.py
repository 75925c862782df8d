"""Small random Hugging Face models of every supported family, built with transformers' own classes,
each saved with a small fast tokenizer shorter than its embedding (padded vocabulary, as GLM-4's
151,343 tokens over 151,552 rows), and every option megaspeech supports switched on."""
from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("the a of and to in is was for on with as by at it he she they we you speech text model voice "
         "sound word time day night city river song light dark old new small large one two three").split()
ROWS = 96  # embedding rows; the tokenizer has 72 (73 as Qwen2Tokenizer)
SHAPE = dict(vocab_size=ROWS, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, max_position_embeddings=256,
             bos_token_id=1, eos_token_id=2, pad_token_id=0)
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # all three wavelength bands at hd 16


def family_config(family: str):
    from transformers import GlmConfig, LlamaConfig, MistralConfig, Qwen2Config
    if family == "llama":  # Llama-3.1/3.2: llama3 rope scaling, tied embeddings (3.2 1B/3B)
        return LlamaConfig(**SHAPE, rope_parameters=LLAMA3, tie_word_embeddings=True)
    if family == "qwen2":  # Qwen2.5 small sizes: QKV bias (always), tied embeddings
        return Qwen2Config(**SHAPE, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                           tie_word_embeddings=True, use_sliding_window=False)
    if family == "mistral":
        return MistralConfig(**SHAPE, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                             sliding_window=None)
    if family == "glm":  # GLM-4: partial rotary (interleaved pairs), QKV bias
        return GlmConfig(**SHAPE, attention_bias=True, rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})
    raise ValueError(family)


def tiny_tokenizer():
    """A byte-level BPE fast tokenizer trained on WORDS (72 tokens, fewer than ROWS): the kind every
    family's AutoTokenizer reloads as it is (Qwen2's rebuilds a Qwen2Tokenizer from vocab + merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([" ".join(WORDS)] * 4, trainers.BpeTrainer(
        vocab_size=72, special_tokens=["<pad>", "<bos>", "<eos>"], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


def build_family(family: str, out: Path, seed: int = 0) -> Path:
    """Save a random `family` model (non-trivial norms and biases) + its tokenizer into `out`."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(family), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
            else:
                p.normal_(0.0, 0.1)  # larger than HF's 0.02: logits far from ties, generations varied
    model.save_pretrained(out, safe_serialization=True)
    tiny_tokenizer().save_pretrained(out)
    return Path(out)


FAMILIES = ("llama", "qwen2", "mistral", "glm")
