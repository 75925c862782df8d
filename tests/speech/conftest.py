"""Shared fixtures: the converted Whisper tiny.en (converted once per session into a temp cache)
and the held-out LibriVox utterances of pocketsphinx-testdata (real human speech)."""

import pytest


@pytest.fixture(scope="session")
def whisper_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("whisper") / "tiny.en"


@pytest.fixture(scope="session")
def whisper(whisper_cache):
    from megaspeech.speech.whisper_ct2 import load_whisper
    return load_whisper(cache_dir=whisper_cache)
