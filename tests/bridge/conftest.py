"""A small real-speech-shaped `audio` dataset for the bridge tests: 16 State of the Union sentences read
by the espeak/flite voices (launch/make_speech_corpus.py's builder), built once per session (~10 s)."""
import pytest


@pytest.fixture(scope="session")
def asr_corpus(tmp_path_factory):
    from megaspeech.speech.corpus import CorpusConfig, build_corpus
    out = tmp_path_factory.mktemp("bridge") / "asr16"
    build_corpus(CorpusConfig(out_dir=str(out), utterances=16, part_size=16, hibari_fraction=0.0, max_words=10))
    return out
