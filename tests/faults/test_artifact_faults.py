"""Artifact faults (issue #41, items 4, 5, 7, 9): a manifest whose shard names leave the dataset is
refused naming the entry and the manifest; an HF export carries checksums that evaluation and import
verify, naming the damaged file; an export is self-contained (its tokenizer inside it); a killed
export's temp dir is removed by the next export, and a symlinked `out` leaves no `.old` dir."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megaspeech.data.shards import Dataset, ShardError, ShardWriter, merge_parts, part_writer
from megaspeech.vocab import Vocab

V = Vocab(text_size=64, speech_size=16)


def _text(path: Path, writer=None) -> Path:
    rng = np.random.default_rng(0)
    with (writer or ShardWriter(path, "text", V, max_samples=2)) as w:
        for i in range(4):
            w.write(f"d{i:04d}", {"tokens": rng.integers(0, V.text_size, 10), "doc": f"generated/d{i:04d}"})
    return path


def _point_first_shard_at(manifest: Path, name: str) -> None:
    m = json.loads(manifest.read_text())
    m["shards"][0]["name"] = name
    manifest.write_text(json.dumps(m))


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_shard_paths_must_stay_inside_the_dataset(tmp_path, kind):
    other = _text(tmp_path / "other")  # a real, valid dataset elsewhere: the entry would read fine
    ds = _text(tmp_path / "ds")
    target = other / "shard-000000.tar"
    name = "../other/shard-000000.tar" if kind == "dotdot" else str(target)
    _point_first_shard_at(ds / "manifest.json", name)
    with pytest.raises(ShardError) as e:
        Dataset(ds)
    assert repr(name) in str(e.value) and str(ds / "manifest.json") in str(e.value)


def test_part_merge_refuses_a_part_shard_outside_the_dataset(tmp_path):
    _text(tmp_path / "other")
    out = tmp_path / "parts"
    for p in range(2):
        _text(out, part_writer(out, "text", V, p, max_samples=2))
    pm = out / "part-00001.manifest.json"
    _point_first_shard_at(pm, "../other/shard-000000.tar")
    with pytest.raises(ShardError) as e:
        merge_parts(out, 2)
    assert "'../other/shard-000000.tar'" in str(e.value) and str(pm) in str(e.value)
    assert not (out / "manifest.json").exists()


# ---------------------------------------------------------------------------------- HF exports
SP_REL = "megaspeech/demo/tokenizer/tokenizer.model"  # as configs/tiny.yaml names it: relative to the repo
DEAD = 999999999  # above any pid_max: no process has it


@pytest.fixture(scope="module")
def tiny_model():
    import torch

    from megaspeech.config.schema import ModelConfig
    from megaspeech.model.llm import DecoderLM
    from megaspeech.parallel.layers import TorchLayers
    m = ModelConfig(num_layers=1, hidden_size=32, ffn_hidden_size=64, num_heads=2, num_kv_heads=1, vocab_multiple=64)
    vocab = Vocab(text_size=4096, speech_size=16, sp_model=SP_REL)
    with torch.no_grad():
        sd = DecoderLM(m, TorchLayers(), vocab.padded_size(m.vocab_multiple), seed=0).state_dict()
    return sd, m, vocab


@pytest.fixture
def export(tiny_model):
    """Write an export of the tiny model (the quick start's case: vocab.sp_model relative to the repo)."""
    from megaspeech.checkpoint.hf_export import write_hf

    def make(out: Path) -> Path:
        return write_hf(*tiny_model, out)
    return make


def test_export_is_self_contained_and_evaluable(export, tmp_path, monkeypatch):
    from megaspeech.data.text import TextTokenizer
    from megaspeech.eval.lm import load_lm
    out = export(tmp_path / "hf")
    shutil.copytree(out, tmp_path / "moved")  # the export alone, anywhere, read from anywhere
    monkeypatch.chdir(tmp_path)
    lm = load_lm(tmp_path / "moved")
    sp = Path(lm.vocab.sp_model)
    assert sp.is_file() and sp.parent == tmp_path / "moved", lm.vocab.sp_model
    ids = TextTokenizer(lm.vocab).encode("In the beginning")  # what launch/evaluate.py's suite builds
    assert len(ids) > 0 and max(ids) < 4096


def _flip(path: Path, at: int) -> None:
    b = bytearray(path.read_bytes())
    b[at] ^= 0x01
    path.write_bytes(bytes(b))


def test_a_flipped_byte_in_an_export_is_named(export, tmp_path):
    from megaspeech.checkpoint.hf_import import load_hf_state_dict
    from megaspeech.eval.lm import load_lm
    out = export(tmp_path / "hf")
    load_lm(out)
    load_hf_state_dict(out)
    st = out / "model.safetensors"
    _flip(st, st.stat().st_size // 2)  # in the tensor data: safetensors itself loads it without complaint
    with pytest.raises(ValueError, match=f"{st}: sha256 does not match"):
        load_lm(out)
    with pytest.raises(ValueError, match=f"{st}: sha256 does not match"):
        load_hf_state_dict(out)  # model.init_from_hf pointing at the export
    files = json.loads((out / "checksums.json").read_text())["files"]
    assert {"model.safetensors", "config.json", "vocab.json", "sentencepiece.model"} <= set(files)
    # launch/evaluate.py: one line naming the file, rc 2
    p = subprocess.run([sys.executable, "launch/evaluate.py", "--config", "configs/eval/spoken_lm.yaml",
                        f"model={out}", f"out_dir={tmp_path / 'eval'}"], cwd=Path(__file__).parents[2],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and str(st) in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    # a plain HF directory (no megaspeech marker, e.g. a downloaded model) has no checksums: accepted
    for f in (".megaspeech-export", "checksums.json"):
        (out / f).unlink()
    _flip(st, st.stat().st_size // 2)  # restored
    load_hf_state_dict(out)


@pytest.mark.parametrize("marker", [True, False])
def test_a_truncated_weight_file_is_named(export, tmp_path, marker):
    from megaspeech.checkpoint.hf_import import load_hf_state_dict
    from megaspeech.eval.lm import load_lm
    out = export(tmp_path / "hf")
    if not marker:  # a plain HF dir: no checksums to compare, the loader's own error is named
        (out / ".megaspeech-export").unlink()
    st = out / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    for load in (load_lm, load_hf_state_dict):
        with pytest.raises(ValueError, match=str(st)):
            load(out)


def test_a_killed_exports_temp_dir_is_removed_by_the_next(export, tmp_path):
    MARKER, TMP_MARKER = ".megaspeech-export", ".megaspeech-export-tmp"
    out = tmp_path / "hf"
    killed = tmp_path / f"hf.tmp{DEAD}"  # what a SIGKILL during save_pretrained leaves
    killed.mkdir()
    (killed / TMP_MARKER).write_text(f"{DEAD}\n")
    (killed / "model.safetensors").write_bytes(b"\0" * 4096)
    old = tmp_path / f"hf.old{DEAD}"  # killed between moving the previous export aside and deleting it
    old.mkdir()
    (old / MARKER).write_text("")
    alive = tmp_path / f"hf.tmp{os.getpid()}x"  # not our pattern
    foreign = tmp_path / f"hf.tmp{DEAD + 1}"  # our pattern, but no marker: not provably ours
    for d in (alive, foreign):
        d.mkdir()
        (d / "notes.txt").write_text("keep")
    export(out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("hf")) == \
        sorted(["hf", alive.name, foreign.name])
    assert (out / MARKER).is_file() and not (out / TMP_MARKER).exists()


def test_export_through_a_symlinked_out_leaves_no_old_dir(export, tmp_path):
    real, link = tmp_path / "exports" / "v1", tmp_path / "current"
    real.mkdir(parents=True)
    link.symlink_to(real)
    export(link)
    export(link)  # replaces the previous export behind the link
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert (link / "model.safetensors").is_file() and (real / "checksums.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "exports"]
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["v1"]
