"""One consistent pipeline preset: the CPU speech tokenizer recipes' codebooks equal the speech
vocabulary of the LM presets and demo data that read their codes."""
import json
from pathlib import Path

import yaml

from megaspeech.config.load import load_config
from megaspeech.speech.tokenizer_training import SpeechTokenizerTrainingConfig

ROOT = Path(__file__).resolve().parents[2]


def test_tokenizer_codebook_matches_speech_vocab():
    sizes = {name: load_config(SpeechTokenizerTrainingConfig, ROOT / "configs" / name).tokenizer.codebook_size
             for name in ("speech_tokenizer_tiny.yaml", "speech_tokenizer_tiny_e2e.yaml",
                          "speech_tokenizer_tiny_distill.yaml")}
    vocab = {name: yaml.safe_load((ROOT / "configs" / name).read_text())[key]["speech_size"]
             for name, key in (("tiny.yaml", "vocab"), ("data/demo.yaml", "tokenizer"),
                               ("hf/smollm2_135m.yaml", "vocab"))}
    for f in ("demo/tokenizer/vocab.json", "demo/text/vocab.json"):
        vocab[f] = json.loads((ROOT / "megaspeech" / f).read_text())["speech_size"]
    vocab["demo/text/manifest.json"] = json.loads(
        (ROOT / "megaspeech/demo/text/manifest.json").read_text())["vocab"]["speech_size"]
    assert set(sizes.values()) == set(vocab.values()) == {4096}, (sizes, vocab)
    e2e = load_config(SpeechTokenizerTrainingConfig, ROOT / "configs/speech_tokenizer_tiny_e2e.yaml")
    assert e2e.augment.enabled and e2e.tokenizer.frame_rate == 12.5
