"""The container image: the Dockerfile's properties, and the package it installs really works.

`make image-test` (scripts/image_test.py) builds and runs the real image with podman; it takes
a minute or two cold, so `make test` checks the Dockerfile as text here, and does what its build
stage does (build our wheel, install it) for real outside a container.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    arguments: str


def instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions, comments dropped and backslash continuations joined."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            found.append(Instruction(keyword.upper(), " ".join(arguments.split())))
    return found


def stages() -> list[list[Instruction]]:
    """Instructions grouped by build stage (the part before the first FROM is stage 0's header)."""
    groups: list[list[Instruction]] = []
    for instruction in instructions((ROOT / "Dockerfile").read_text()):
        if instruction.keyword == "FROM":
            groups.append([])
        if groups:
            groups[-1].append(instruction)
    return groups


def test_base_image_is_slim_python_311_pinned_by_tag() -> None:
    """Both stages use one slim Python 3.11 image pinned to a patch release, never :latest."""
    header = instructions((ROOT / "Dockerfile").read_text())
    (arg,) = [i for i in header[: header.index(stages()[0][0])] if i.keyword == "ARG"]
    name, _, default = arg.arguments.partition("=")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", default), default
    froms = [stage[0].arguments.split()[0] for stage in stages()]
    assert froms == [f"${{{name}}}", f"${{{name}}}"]


def test_final_stage_runs_as_non_root_with_the_cli_as_entrypoint() -> None:
    """The final stage: numeric non-root USER, ENTRYPOINT the CLI, only copies from the build."""
    final = stages()[-1]
    keywords = [i.keyword for i in final]
    assert "RUN" not in keywords, "no package manager or compiler runs in the final image"
    (user,) = [i.arguments for i in final if i.keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert int(uid) > 0
    assert int(gid) > 0
    (entrypoint,) = [i.arguments for i in final if i.keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["hostport-extender"]
    copies = [i.arguments for i in final if i.keyword == "COPY"]
    assert copies
    assert all(c.startswith("--from=build ") for c in copies)
    env = " ".join(i.arguments for i in final if i.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "read-only root filesystem: never write .pyc"


def test_build_stage_installs_pinned_wheels_only() -> None:
    """The build installs with constraints.txt and --only-binary, and precompiles bytecode."""
    build = stages()[0]
    assert build[0].arguments.endswith(" AS build")
    run = " ".join(i.arguments for i in build if i.keyword == "RUN")
    assert "-c constraints.txt" in run
    assert "--only-binary=:all:" in run
    assert "compileall" in run
    assert not re.search(r"apt-get|apk |gcc|build-essential", run)
    for instruction in build:
        if instruction.keyword == "COPY":
            *sources, _ = instruction.arguments.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY names {source}, which is not in the repo"


def test_dockerignore_keeps_the_context_to_what_is_copied() -> None:
    """Only the files the Dockerfile copies are sent as build context (no .venv, no tests)."""
    lines = (ROOT / ".dockerignore").read_text().split("\n")
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        "extender",
        "config/samples",
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our wheel, built as the build stage builds it, from only what .dockerignore lets in."""
    context = tmp_path_factory.mktemp("context")
    for name in ("pyproject.toml", "constraints.txt", "README.md"):
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(
        ROOT / "extender", context / "extender", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path_factory.mktemp("wheels")
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(out)]
    subprocess.run(
        [*command, str(context)], check=True, capture_output=True, timeout=300, cwd=context
    )
    (built,) = out.glob("hostport_extender-*.whl")
    return built


def test_wheel_holds_every_module_and_the_entry_point(wheel: Path) -> None:
    """Every extender/*.py is in the wheel, and `hostport-extender` points at cli:main."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    source = {f"extender/{p.name}" for p in (ROOT / "extender").glob("*.py")}
    assert source <= names, source - names
    assert "hostport-extender = extender.cli:main" in scripts
    assert not any(n.startswith("tests/") for n in names)


def test_installed_wheel_runs_every_command(wheel: Path, tmp_path: Path) -> None:
    """Installed with pip (dependencies from this environment), each subcommand's --help works."""
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # Only the installed copy of `extender` is importable: not the source tree.
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONSAFEPATH": "1"}
    for command in ([], ["serve"], ["webhook"], ["certs"]):
        result = subprocess.run(
            [sys.executable, "-m", "extender", *command, "--help"],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "usage: hostport-extender" in result.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import extender; print(extender.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    assert where.stdout.startswith(str(target))


@pytest.mark.parametrize("script", ["system-deps", "image-build", "podman-env"])
def test_image_scripts_are_valid_bash(script: str) -> None:
    """The scripts `make image` runs parse (`make test` does not build the image itself)."""
    result = subprocess.run(
        ["bash", "-n", str(ROOT / "scripts" / script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_system_deps_rejects_an_unknown_group() -> None:
    """`scripts/system-deps GROUP` knows `test` and `image`; anything else is a usage error."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "system-deps"), "nonsense"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "usage: scripts/system-deps [test|image]\n"
