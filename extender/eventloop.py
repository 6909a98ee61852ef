"""The event loop `serve` runs on: uvloop unless the settings ask for the standard library's.

The scheduler calls the extender serially inside its scheduling cycle, and every pod it
schedules also reaches us as watch events, so the loop's own cost per wake-up (selector,
transport, callbacks) is paid on every filter, prioritize and watch chunk, on the same cores as
the scheduler and the API server. uvloop (libuv, the loop aiohttp is most often deployed on)
pays less of it: on the 2-core benchmark machine a watch client's CPU per read fell from 123 to
75 us, and the busy-cluster driver scheduled 10% more pods a second with 10-12% less of our CPU
per pod, in rounds interleaved with the asyncio build (README, Performance).
`asyncio` stays available as the fallback an operator can choose.

The node agent does not use this: uvloop cannot open the netlink sockets pyroute2 reads
(`cannot open a UDP handle, invalid family 16`), so the agent runs on asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from extender.errors import ExtenderError
from extender.settings import EVENT_LOOPS

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
_T = TypeVar("_T")


def loop_factory(name: str) -> LoopFactory:
    """The function that makes a new loop of kind `name` (one of EVENT_LOOPS).

    Resolved before anything is built, so a missing uvloop is a clear error at start-up.
    """
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        try:
            import uvloop  # noqa: PLC0415 (only `serve` needs it)
        except ImportError as error:
            raise ExtenderError(
                "event_loop uvloop: the uvloop package is not installed "
                "(pip install uvloop, or run with --event-loop asyncio)"
            ) from error
        return uvloop.new_event_loop
    raise ExtenderError(f"event_loop {name!r}: choose one of {', '.join(EVENT_LOOPS)}")


def run(factory: LoopFactory, main: Coroutine[Any, Any, _T]) -> _T:
    """Run `main` to completion on a new loop from `factory`, as `asyncio.run` does."""
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
