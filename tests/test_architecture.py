"""The house rules of docs/architecture.md, read from the source: the layer order of the packages,
no import cycle between files or packages, no file over 400 lines or function over 80, thin
command-line tools, and no library code that reaches into launch/."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first; a module imports only from its own layer or below (docs/architecture.md).
LAYERS = [
    ["fs", "errors"],
    ["vocab"],
    ["config"],
    ["kernels", "data", "model", "accounting"],
    ["parallel"],
    ["checkpoint"],
    ["train"],
    ["speech", "synth", "bridge"],
    ["eval"],
    ["pipeline", "ops"],
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
TOP = len(LAYERS)  # launch/ and benchmarks/: above everything

# (importer unit, imported unit): why the upward import is right. At most two.
EXCEPTIONS: dict[tuple[str, str], str] = {}

MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def _sources(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every megaspeech module `path` imports (module level and inside functions), with its line."""
    mod = _module(path)
    pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(pkg[: len(pkg) - node.level + 1]) if node.level else ""
            target = ".".join(x for x in (base, node.module) if x)
            # `from megaspeech.checkpoint import engine`: the submodule is what is imported
            out += [(f"{target}.{a.name}", node.lineno) for a in node.names]
    return [(t, line) for t, line in out if t == "megaspeech" or t.startswith("megaspeech.")]


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _known_module(name: str) -> str:
    """`megaspeech.a.b.Name` -> the longest prefix that is a file or package."""
    parts = name.split(".")
    while parts:
        p = ROOT.joinpath(*parts)
        if p.with_suffix(".py").is_file() or (p / "__init__.py").is_file():
            return ".".join(parts)
        parts = parts[:-1]
    return name


def _layer_of(path: Path) -> tuple[str, int]:
    top = path.relative_to(ROOT).parts[0]
    if top in ("launch", "benchmarks"):
        return top, TOP
    unit = _unit(_module(path))
    if unit is None:  # megaspeech/__init__.py: the version, below everything
        return "megaspeech", 0
    assert unit in LAYER, f"{path}: megaspeech.{unit} has no layer; add it to LAYERS here and to docs/architecture.md"
    return unit, LAYER[unit]


def test_every_import_runs_down_the_layers():
    upward = []
    used = set()
    for path in _sources("megaspeech", "launch", "benchmarks"):
        unit, layer = _layer_of(path)
        for target, line in _imports(path):
            tu = _unit(target)
            if tu is None or tu == unit:
                continue
            assert tu in LAYER, f"{path}:{line} imports {target}: megaspeech.{tu} has no layer"
            if LAYER[tu] > layer:
                if (unit, tu) in EXCEPTIONS:
                    used.add((unit, tu))
                    continue
                upward.append(f"{path.relative_to(ROOT)}:{line} ({unit}, layer {layer}) imports {target} "
                              f"({tu}, layer {LAYER[tu]})")
    assert not upward, "imports from a lower layer up to a higher one:\n" + "\n".join(upward)
    assert len(EXCEPTIONS) <= 2 and set(EXCEPTIONS) == used, f"stale or too many exceptions: {EXCEPTIONS}"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def _graphs() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    files: dict[str, set[str]] = {}
    units: dict[str, set[str]] = {}
    for path in _sources("megaspeech"):
        mod = _module(path)
        for target, _ in _imports(path):
            t = _known_module(target)
            if t != mod and not mod.startswith(t + "."):  # a package's own __init__ is not a cycle
                files.setdefault(mod, set()).add(t)
            a, b = _unit(mod), _unit(t)
            if a and b and a != b:
                units.setdefault(a, set()).add(b)
    return files, units


def test_no_import_cycle_between_files_or_packages():
    files, units = _graphs()
    assert _cycle(units) is None, f"package import cycle: {' -> '.join(_cycle(units))}"
    assert _cycle(files) is None, f"file import cycle: {' -> '.join(_cycle(files))}"


def test_the_layer_test_catches_a_planted_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: an import from model/ up to train/ and a two-file cycle are found."""
    pkg = tmp_path / "megaspeech"
    for sub in ("model", "train"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "a.py").write_text("def f():\n    from megaspeech.train.b import g\n")
    (pkg / "train" / "b.py").write_text("from megaspeech.model.a import f\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match=r"model/a.py:2 \(model, layer 3\) imports megaspeech.train.b.g"):
        test_every_import_runs_down_the_layers()
    with pytest.raises(AssertionError, match="package import cycle: model -> train -> model"):
        test_no_import_cycle_between_files_or_packages()


def test_files_and_functions_stay_small():
    long_files, long_functions = [], []
    for path in _sources("megaspeech", "launch", "benchmarks"):
        text = path.read_text()
        n = text.count("\n")
        if n > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(ROOT)}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {size} lines")
    assert not long_files, f"files over {MAX_FILE_LINES} lines: {long_files}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_tools_use_the_installed_package_and_the_library_never_loads_them():
    bad = [str(p.relative_to(ROOT)) for p in _sources("launch", "benchmarks", "megaspeech", "tests")
           if re.search(r"sys\.path\.(insert|append)", p.read_text())]
    assert not bad, f"sys.path edits (the package is installed; import it): {bad}"
    loads = [str(p.relative_to(ROOT)) for p in _sources("megaspeech")
             if re.search(r"spec_from_file_location|runpy|exec_module", p.read_text())]
    assert not loads, f"library modules that load launch/ files: {loads}"


def test_no_two_files_share_a_name_across_packages():
    """Two files of one name doing different jobs mislead (launch/X.py may wrap megaspeech/*/X.py)."""
    seen: dict[str, list[str]] = {}
    for path in _sources("megaspeech"):
        if path.name not in ("__init__.py",):
            seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    dup = {k: v for k, v in seen.items() if len(v) > 1}
    assert not dup, f"file names used twice in megaspeech/: {dup}"
