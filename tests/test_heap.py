"""The collector policy around loading: held off while loading, then the loaded heap frozen."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from extender.heap import collector_paused, loading, refreeze


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


def test_the_collector_stays_off_until_the_last_of_overlapping_pauses_ends() -> None:
    """Two informers relist at once: the first to finish must not turn the collector back on.

    The pauses overlap without nesting (the node list ends while the pod list is still
    loading), which is what asyncio tasks do; turning it on there let full collections scan
    the rest of the pod list, 150-630 ms stalls in bench.busy.
    """
    nodes, pods = collector_paused(), collector_paused()
    nodes.__enter__()
    pods.__enter__()
    nodes.__exit__(None, None, None)
    assert gc.isenabled() is False
    pods.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_pause_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with collector_paused():
            pass
        assert gc.isenabled() is False
    finally:
        gc.enable()


class _Cycle:
    """An object in a reference cycle with itself: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_refreeze_collects_young_cycles_then_freezes_the_survivors(
    collections: list[int],
) -> None:
    """What lives on is frozen; the cyclic garbage of the last requests is collected, not kept."""
    kept = [[i] for i in range(1000)]
    garbage = _Cycle()
    gone = weakref.ref(garbage)
    del garbage
    frozen_before = gc.get_freeze_count()
    assert refreeze()
    assert gone() is None  # collected before the freeze
    assert gc.get_freeze_count() >= frozen_before + len(kept)
    assert 2 not in collections  # never a full collection


def test_refreeze_waits_while_a_pause_is_open() -> None:
    """Mid-relist the young generations hold the list being decoded: nothing is done then."""
    frozen_before = gc.get_freeze_count()
    with collector_paused():
        survivor = [[i] for i in range(100)]
        assert refreeze() is False
        assert gc.get_freeze_count() == frozen_before
    assert survivor
