"""Regenerate glm4voice_codes.json with GLM-4-Voice's own tokenizer code (not part of the suite).

    git clone https://github.com/THUDM/GLM-4-Voice /tmp/GLM-4-Voice   # the golden file names the commit
    python -m tests.speech.golden.make_glm4voice_golden /tmp/GLM-4-Voice

The release's `speech_tokenizer/` is copied to a temporary directory and imported from there (nothing of it
enters this repository), with the changes needed to run it on this CPU machine and transformers 5.x:
`.cuda()` / `device="cuda"` -> CPU in utils.py, `torchaudio` stubbed (it only reads files and resamples; the
audio is handed over as 16 kHz tensors) and `WhisperVQEncoder.get_extended_attention_mask` restored as
transformers 4.44 defined it (2-D mask, encoder). Then its `load_quantize_encoder` + `extract_speech_token`
tokenize the test's utterances with each checkpoint variant of tests/speech/test_glm4voice.py.
"""
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch
import transformers
import transformers.models.whisper  # noqa: F401  (before the torchaudio stub: transformers probes it)

from tests.speech.test_glm4voice import GOLDEN, VARIANTS, golden_audios, make_release

CPU = [(".cuda()", ""), ("device='cuda'", "device='cpu'"), ('device="cuda"', 'device="cpu"'), (".to('cuda')", "")]


def import_reference(repo: Path, tmp: Path):
    pkg = tmp / "speech_tokenizer"
    shutil.copytree(repo / "speech_tokenizer", pkg)
    utils = pkg / "utils.py"
    text = utils.read_text()
    for a, b in CPU:
        text = text.replace(a, b)
    utils.write_text(text)
    sys.modules["torchaudio"] = types.SimpleNamespace(transforms=types.SimpleNamespace(Resample=None))
    spec = importlib.util.spec_from_file_location("speech_tokenizer", pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    sys.modules["speech_tokenizer"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["speech_tokenizer"])
    import speech_tokenizer.modeling_whisper as modeling
    import speech_tokenizer.utils as ref_utils

    def extended_mask(self, attention_mask, input_shape):
        ext = attention_mask[:, None, None, :].to(dtype=self.dtype)
        return (1.0 - ext) * torch.finfo(self.dtype).min
    modeling.WhisperVQEncoder.get_extended_attention_mask = extended_mask
    return ref_utils


def main(repo: Path, seed: int = 0) -> None:
    commit = subprocess.check_output(["git", "-C", str(repo), "rev-parse", "HEAD"], text=True).strip()
    audios = golden_audios()
    out = {"reference": {"repo": "THUDM/GLM-4-Voice", "commit": commit,
                         "code": "speech_tokenizer/utils.py load_quantize_encoder + extract_speech_token, patched "
                                 "copy: .cuda()/device='cuda' -> cpu, torchaudio stubbed (audio given as tensors at "
                                 "16 kHz), WhisperVQEncoder.get_extended_attention_mask restored as in transformers "
                                 "4.44 (gone in 5.x)",
                         "transformers": transformers.__version__, "torch": torch.__version__},
           "seed": seed, "utterances": {k: len(v) for k, v in audios.items()}, "codes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ref = import_reference(repo, Path(tmp))
        for name, over in sorted(VARIANTS.items()):
            d = make_release(Path(tmp) / name, seed, **over)
            fe = transformers.WhisperFeatureExtractor.from_pretrained(str(d))
            codes = ref.extract_speech_token(ref.load_quantize_encoder(str(d)), fe,
                                             [(torch.from_numpy(a)[None], 16000) for a in audios.values()])
            out["codes"][name] = dict(zip(audios, codes))
    GOLDEN.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {GOLDEN} ({sum(len(c) for v in out['codes'].values() for c in v.values())} codes, commit {commit})")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
