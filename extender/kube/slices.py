"""Long runs of work (a relist, a burst of watch lines) cut into slices with requests in between."""

from __future__ import annotations

import asyncio
import time

SLICE_SECONDS = 0.0005
"""Longest run of list items or watch lines handled without letting other tasks (requests) run."""


class Slices:
    """Cuts a long run of work into slices of SLICE_SECONDS, letting other tasks (the
    scheduler's requests) run between them: call `await slices.yield_if_due()` after each
    step of the work."""

    __slots__ = ("_started",)

    def __init__(self) -> None:
        self._started = time.perf_counter()

    def due(self) -> bool:
        """Whether this slice has run its time (for work that cannot await: see watch.py)."""
        return time.perf_counter() - self._started > SLICE_SECONDS

    def restart(self) -> None:
        self._started = time.perf_counter()

    async def yield_if_due(self) -> None:
        if self.due():
            await asyncio.sleep(0)
            self.restart()
