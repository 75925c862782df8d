"""launch/generate.py on the suite's small untrained checkpoint (tests/eval/conftest.py `planted`) and on its
Hugging Face export: the same seed gives the same sampled codes and text on both backends; the speech
files are on disk with the right rate and length (codes / frame_rate); streamed audio equals the whole
utterance's; a bad prompt file, a missing decoder or a prompt of the wrong modality is a clear error."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.helpers.decoders import FRAME_RATE, small_decoder
from tests.helpers.heldout_data import VOCAB

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("generate_tool", ROOT / "launch/generate.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)
CONFIG = str(ROOT / "configs/generate.yaml")
SAMPLING = ["temperature=0.9", "top_p=0.95", "seed=7"]


@pytest.fixture(scope="module")
def parts(planted, tmp_path_factory):
    """(checkpoint run dir, its HF export, a small random speech decoder for the test vocabulary)."""
    from megaspeech.checkpoint.hf_export import export_hf
    from megaspeech.checkpoint.offline import resolve
    d = tmp_path_factory.mktemp("generate")
    return planted[1], export_hf(resolve(planted[1]), d / "hf"), small_decoder(d / "decoder", VOCAB.speech_size)


def generate(model, out: Path, *args: str) -> dict:
    assert tool.main(["--config", CONFIG, f"model={model}", f"out_dir={out}", *args]) == 0
    return json.loads((out / "generation.json").read_text())


def test_checkpoint_and_export_sample_the_same_speech_and_text(parts, tmp_path, capsys):
    ckpt, hf, decoder = parts
    speech = ["--text", "The union is strong", "--mode", "T->S", f"speech_decoder={decoder}", "max_new=24", *SAMPLING]
    a, b = generate(ckpt, tmp_path / "ck", *speech), generate(hf, tmp_path / "hf", *speech)
    assert (a["backend"], b["backend"]) == ("checkpoint", "hf")
    codes = np.load(tmp_path / "ck" / "codes.npy")
    np.testing.assert_array_equal(codes, np.load(tmp_path / "hf" / "codes.npy"))
    assert len(codes) == a["codes"] > 0 and codes.min() >= 0 and codes.max() < VOCAB.speech_size
    # sampled, not greedy: another seed draws other codes
    generate(ckpt, tmp_path / "seed8", *speech[:-1], "seed=8")
    assert not np.array_equal(codes, np.load(tmp_path / "seed8" / "codes.npy"))
    # the files: 16 kHz PCM, codes / frame_rate seconds, and a PNG
    info = sf.info(tmp_path / "ck" / "speech.wav")
    assert info.samplerate == 16000 and info.frames == round(len(codes) / FRAME_RATE * 16000) == 1280 * len(codes)
    assert (tmp_path / "ck" / "mel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # text out: the same sampled text on both backends, printed
    capsys.readouterr()
    text = ["--text", "The union is strong", "--mode", "T->T", "max_new=12", *SAMPLING]
    ta, tb = generate(ckpt, tmp_path / "tck", *text), generate(hf, tmp_path / "thf", *text)
    assert ta["tokens"] == tb["tokens"] == 12 and ta["text"] == tb["text"] and ta["text"] in capsys.readouterr().out


def test_streamed_audio_equals_the_whole_utterance(parts, tmp_path):
    ckpt, _, decoder = parts
    args = ["--text", "We the people", "--mode", "T->S", f"speech_decoder={decoder}", "max_new=40", *SAMPLING]
    whole = generate(ckpt, tmp_path / "whole", *args)
    streamed = generate(ckpt, tmp_path / "stream", *args, "--stream", "block=10")
    np.testing.assert_array_equal(np.load(tmp_path / "whole" / "codes.npy"), np.load(tmp_path / "stream" / "codes.npy"))
    w, sr = sf.read(tmp_path / "whole" / "speech.wav", dtype="float32")
    s, _ = sf.read(tmp_path / "stream" / "speech.wav", dtype="float32")
    assert sr == 16000 and len(w) == len(s) == 1280 * whole["codes"]
    np.testing.assert_allclose(s, w, atol=2 / 32768)  # 16-bit samples: one step of rounding either way
    assert 0 < streamed["first_audio_s"] < streamed["wall_s"]


@pytest.mark.parametrize("case", ["missing wav", "not audio", "missing decoder", "wrong modality"])
def test_bad_inputs_are_named(parts, tmp_path, capsys, case):
    ckpt, _, decoder = parts
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a recording")
    wav = ["--mode", "S->T", "speech_tokenizer=x", "--wav"]
    args = {"missing wav": ([*wav, str(tmp_path / "nope.wav")], "nope.wav: no such file"),
            "not audio": ([*wav, str(junk)], "junk.wav: cannot decode audio"),
            "missing decoder": (["--text", "hi", "--mode", "T->S", f"speech_decoder={tmp_path / 'nodec'}"],
                                "nodec: no such directory; train one with launch/train_speech_decoder.py"),
            "wrong modality": (["--text", "hi", "--mode", "S->S"],
                               "mode: S->S starts from speech, but the prompt is text")}
    argv, msg = args[case]
    assert tool.main(["--config", CONFIG, f"model={ckpt}", f"out_dir={tmp_path / 'out'}", *argv]) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "out" / "speech.wav").exists()
