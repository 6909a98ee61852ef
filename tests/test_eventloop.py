"""extender/eventloop.py: the loop `serve` runs on, and the errors an operator can meet."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from extender.errors import ExtenderError
from extender.eventloop import loop_factory, run
from extender.settings import EVENT_LOOPS, Settings, SettingsError


async def _running_loop_type() -> type:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


@pytest.mark.parametrize(
    ("name", "expected"), [("uvloop", uvloop.Loop), ("asyncio", asyncio.SelectorEventLoop)]
)
def test_run_uses_a_new_loop_of_the_named_kind(name: str, expected: type) -> None:
    assert issubclass(run(loop_factory(name), _running_loop_type()), expected)


def test_uvloop_is_the_default() -> None:
    assert Settings().event_loop == "uvloop"
    assert EVENT_LOOPS[0] == "uvloop"


def test_an_unknown_loop_is_refused_by_the_settings() -> None:
    with pytest.raises(SettingsError, match="event_loop 'trio': choose one of uvloop, asyncio"):
        Settings(event_loop="trio")


def test_a_missing_uvloop_says_how_to_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where uvloop cannot be installed, the error names the package and the fallback."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now raises ImportError
    with pytest.raises(ExtenderError, match="pip install uvloop, or run with --event-loop asyncio"):
        loop_factory("uvloop")
