"""Packaging (issue #36): every third-party module that megaspeech/, launch/ or benchmarks/ imports is
declared in setup.py, and Hugging Face's `kernels` package (which transformers >= 5.25 imports by that
name) coexists with megaspeech.kernels from the repository root."""
from __future__ import annotations

import ast
import importlib.metadata as md
import re
import subprocess
import sys
import textwrap
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("megaspeech", "launch", "benchmarks")


def normalize(name: str) -> str:
    """PEP 503 name: `Flash_Attn` and `flash-attn` are the same distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _value(node: ast.AST, names: dict[str, ast.AST]):
    """A literal, a module-level name bound to one, or `a + b` of those (setup.py's requirement lists)."""
    if isinstance(node, ast.Name):
        return _value(names[node.id], names)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _value(node.left, names) + _value(node.right, names)
    if isinstance(node, ast.Dict):
        return {_value(k, names): _value(v, names) for k, v in zip(node.keys, node.values)}
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_value(e, names) for e in node.elts]
    return ast.literal_eval(node)


@lru_cache(maxsize=None)
def declared(setup_py: Path = REPO / "setup.py") -> dict[str, list[str]]:
    """{normalized distribution name: where setup.py declares it ('install_requires', 'extra NAME')},
    read with ast from setup.py itself (not from an installed, possibly stale, egg-info)."""
    tree = ast.parse(setup_py.read_text(), str(setup_py))
    names = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
             if isinstance(t, ast.Name)}
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
    kw = {k.arg: _value(k.value, names) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
    groups = [("install_requires", kw.get("install_requires", []))]
    groups += [(f"extra {extra!r}", reqs) for extra, reqs in sorted(kw.get("extras_require", {}).items())]
    out: dict[str, list[str]] = {}
    for where, reqs in groups:
        for r in reqs:
            out.setdefault(normalize(re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0]), []).append(where)
    return out


def imports(path: Path) -> set[str]:
    """Top-level names of every absolute import in `path`, at module level or inside functions, and of
    `__import__("x")` / `importlib.import_module("x")` with a literal name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and not node.args[0].value.startswith(".")
              and (getattr(node.func, "id", None) == "__import__"
                   or getattr(node.func, "attr", None) == "import_module")):
            found.add(node.args[0].value.split(".")[0])
    return found


def first_party(name: str, path: Path, root: Path) -> bool:
    """megaspeech itself, a scanned folder or a top-level package/module of the repository
    (benchmarks), or a script beside the importing one (launch/ scripts import each other: their
    folder is sys.path[0])."""
    return (name == "megaspeech" or name in SCANNED or (root / name / "__init__.py").is_file()
            or (root / f"{name}.py").is_file() or (path.parent / f"{name}.py").is_file()
            or (path.parent / name / "__init__.py").is_file())


def undeclared(files: list[Path], root: Path = REPO, setup_py: Path = REPO / "setup.py") -> list[str]:
    """One line per third-party import whose distribution setup.py does not declare."""
    dists = md.packages_distributions()
    decl = declared(setup_py)
    problems = []
    for path in files:
        for mod in sorted(imports(path)):
            if mod in sys.stdlib_module_names or first_party(mod, path, root):
                continue
            # installed: the distribution(s) providing it; not installed (an optional extra such as
            # flash-attn on CPU): the import name itself, which is the distribution name for those
            candidates = dists.get(mod) or [mod]
            if not any(normalize(d) in decl for d in candidates):
                problems.append(f"{path.relative_to(root)}: imports {mod!r} (distribution "
                                f"{' or '.join(candidates)}) which setup.py does not declare in "
                                f"install_requires or an extra")
    return problems


def scanned_files() -> list[Path]:
    return sorted(p for d in SCANNED for p in (REPO / d).rglob("*.py"))


def test_every_third_party_import_is_declared():
    files = scanned_files()
    assert len(files) > 50 and any(p.name == "audio.py" for p in files)
    assert not undeclared(files), "\n".join(undeclared(files))


def test_the_declaration_check_fails_on_a_planted_undeclared_import(tmp_path):
    """The check can fail: a fake module with a function-level import and an import_module() of installed
    but undeclared distributions (pluggy, iniconfig: pytest's own dependencies), and a module-level
    import of a package that is not installed, is reported naming each module and the file."""
    pkg = tmp_path / "megaspeech" / "speech"
    pkg.mkdir(parents=True)
    fake = pkg / "planted.py"
    fake.write_text(textwrap.dedent("""\
        import importlib
        import os
        import numpy as np
        from megaspeech.speech.audio import resample
        import not_a_real_dist_xyz.sub

        def f():
            from pluggy import HookimplMarker
            return HookimplMarker, np, os, resample, importlib.import_module("iniconfig.exceptions")
        """))
    found = undeclared([fake], root=tmp_path)
    assert len(found) == 3, found
    assert all(line.startswith(str(Path("megaspeech/speech/planted.py"))) for line in found), found
    assert {line.split(": imports ")[1].split()[0] for line in found} == {"'pluggy'", "'not_a_real_dist_xyz'",
                                                                          "'iniconfig'"}
    # and the real tree's declarations are what make it pass: numpy is declared, pluggy is not
    assert declared()["numpy"] == ["install_requires"] and "pluggy" not in declared()


def test_setup_declares_scipy_and_no_transformers_cap_below_the_newest():
    decl = declared()
    for dist in ("scipy", "soundfile", "tokenizers", "transformers", "torch"):
        assert decl.get(dist) == ["install_requires"], (dist, decl.get(dist))
    assert decl["kernels"] == ["extra 'dev'"] and decl["av"] == ["extra 'dev'", "extra 'speech'"]
    assert "<5.25" not in (REPO / "setup.py").read_text()


def test_hf_kernels_and_megaspeech_kernels_and_whisper_in_one_process():
    """From the repository root (where the old top-level kernels/ package was, and where sys.path[0]
    points for `python -c`), `import kernels` is Hugging Face's package, megaspeech.kernels imports
    beside it, and transformers builds and runs a small Whisper (transformers >= 5.25 imports
    `kernels` while building models)."""
    code = textwrap.dedent("""\
        import importlib.metadata, os, sys
        import torch
        import kernels
        import megaspeech.kernels.rmsnorm as rms
        from megaspeech.kernels import rmsnorm
        from transformers import WhisperConfig, WhisperForConditionalGeneration

        repo = os.path.realpath(os.getcwd())
        assert sys.path[0] in ("", repo), sys.path[0]
        kfile = os.path.realpath(kernels.__file__)
        assert os.path.dirname(os.path.dirname(kfile)) != repo, kfile  # not a top-level kernels/ of ours
        # the module is the one the `kernels` distribution installed (Hugging Face's, from PyPI)
        dist = importlib.metadata.distribution("kernels")
        assert kfile == os.path.realpath(dist.locate_file("kernels/__init__.py")), (kfile, dist._path)
        assert hasattr(kernels, "get_kernel"), dir(kernels)
        assert "megaspeech" + os.sep + "kernels" in rms.__file__ and rms is rmsnorm
        x, w = torch.randn(3, 8), torch.rand(8) + 0.5
        assert torch.allclose(rms.rms_norm(x, w, 1e-6), rms.rms_norm_reference(x, w, 1e-6), atol=1e-6)

        torch.manual_seed(0)
        cfg = WhisperConfig(vocab_size=64, num_mel_bins=16, d_model=32, encoder_layers=1, decoder_layers=1,
                            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                            decoder_ffn_dim=64, max_source_positions=20, max_target_positions=16,
                            decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2)
        model = WhisperForConditionalGeneration(cfg).eval()
        mel = torch.randn(2, 16, 40)  # [batch, mel bins, 2 * max_source_positions frames]
        with torch.no_grad():
            out = model(input_features=mel, decoder_input_ids=torch.tensor([[1, 5, 7], [1, 9, 3]]))
        assert out.logits.shape == (2, 3, 64) and torch.isfinite(out.logits).all()
        print("ok", kfile)
        """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr
