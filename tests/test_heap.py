"""The collector policy around loading: held off while loading, then the loaded heap frozen."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from extender.heap import loading


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generations of every collection that runs during the test; the heap unfrozen after."""
    seen: list[int] = []

    def note(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(note)
    try:
        yield seen
    finally:
        gc.callbacks.remove(note)
        gc.unfreeze()


@pytest.mark.parametrize(("collect", "full_collections"), [(True, 1), (False, 0)])
def test_loading_freezes_what_was_loaded(
    collections: list[int], collect: bool, full_collections: int
) -> None:
    """Objects made while loading end up frozen; only collect=True pays a full collection."""
    frozen_before = gc.get_freeze_count()
    with loading(collect=collect):
        loaded = [[i] for i in range(10_000)]  # lists are always tracked by the collector
        assert gc.isenabled() is False
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen_before + len(loaded)
    assert collections.count(2) == full_collections
