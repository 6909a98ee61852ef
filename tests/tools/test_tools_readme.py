"""The README's toolbox examples are real: each `$ hostport-extender ...` block is run and must
print exactly what the README shows."""

from __future__ import annotations

import re
import shlex

import pytest

from extender.cli import main
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
SECTION = README.split("<!-- section: toolbox -->", 1)[1].split("<!-- section:", 1)[0]
EXAMPLES = re.findall(r"```\n\$ (hostport-extender [^\n]*)\n(.*?)```", SECTION, re.DOTALL)


def test_the_toolbox_section_has_examples() -> None:
    """audit, check and who each have an example to check."""
    assert {command.split()[1] for command, _ in EXAMPLES} == {"audit", "check", "who"}


@pytest.mark.parametrize(("command", "shown"), EXAMPLES, ids=[c for c, _ in EXAMPLES])
def test_readme_example_output(
    command: str, shown: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Running the command from the checkout prints the README's text (and exit code)."""
    monkeypatch.chdir(REPO)
    argv, _, echo = command.partition("; echo")
    code = main(shlex.split(argv)[1:])
    printed = capsys.readouterr().out
    if echo:
        printed += f"exit {code}\n"
    assert printed == shown
