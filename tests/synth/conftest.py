"""Shared fixtures for the synthetic-data tests: the committed demo text shards and a reversible
stand-in converter (text id t -> two codes), which tests the interleaver, not the model."""
from __future__ import annotations

import pytest

from megaspeech.data.shards import read_shard
from megaspeech.data.text import TextTokenizer
from megaspeech.synth.spans import word_start_table
from tests.helpers.synth_data import DEMO


@pytest.fixture(scope="session")
def demo_tok():
    return TextTokenizer.from_dir(DEMO)


@pytest.fixture(scope="session")
def starts_word(demo_tok):
    return word_start_table(demo_tok.sp)


@pytest.fixture(scope="session")
def demo_docs():
    """The first demo shard's documents [(key, sample)]."""
    return list(read_shard(DEMO / "part-00000-000000.tar", "text"))


@pytest.fixture(scope="session")
def speech_tokenizer(tmp_path_factory):
    from megaspeech.speech.tokenizer import TokenizerConfig, build_tokenizer, save_tokenizer
    cfg = TokenizerConfig(codebook_size=4096)  # = the demo vocabulary's speech_size
    model, whisper = build_tokenizer(cfg)  # untrained codebook: the pipeline, not the code quality, is tested
    d = tmp_path_factory.mktemp("stok") / "tokenizer"
    save_tokenizer(d, model, cfg, whisper)
    return d
