"""Whether the extender knows enough to answer the scheduler (GET /readyz, fail-closed filter)."""

from __future__ import annotations

from typing import Protocol


class Readiness(Protocol):
    """Reports whether the port index can be trusted right now, and if not, why."""

    def check(self) -> str | None:
        """None when ready; otherwise a one-line reason such as "pods informer not synced"."""


class AlwaysReady:
    """Snapshot mode: the index is complete as soon as the files are loaded."""

    def check(self) -> str | None:
        return None
