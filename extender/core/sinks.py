"""What an informer feeds: the receiving side of list/watch for one resource kind.

The informer (extender/kube/informer.py) knows HTTP and the watch protocol; the cluster state knows
ports. This Protocol is the only thing they share, so either side can be tested alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

RawObject = dict[str, Any]
"""An undecoded Kubernetes object as parsed by orjson (a Pod or a Node)."""
Listed = TypeVar("Listed")
Item = TypeVar("Item")


class ObjectSink(Protocol):
    """Receives one resource kind's objects, in the order the API server produced them."""

    def upsert(self, raw: RawObject) -> None:
        """An ADDED or MODIFIED object (also every object of the initial list)."""

    def delete(self, raw: RawObject) -> None:
        """A DELETED object (its last known state)."""

    def replace(self, raws: list[RawObject]) -> None:
        """A complete (re)list: every object not in `raws` is gone and must release what it held."""


@runtime_checkable
class SteppedSink(ObjectSink, Protocol[Listed]):
    """A sink that can also take a (re)list a step at a time, so the caller can yield between,
    and keeps of each listed object only a compact form while the list is being fetched."""

    def compact(self, raw: RawObject) -> Listed | None:
        """What a (re)list keeps of one listed object until the list is complete; None if the
        object cannot change the state. Called as the list's pages arrive, so each raw object
        is freed right after it is decoded; it must change nothing itself."""

    def replace_in_steps(self, listed: list[Listed]) -> Iterator[None]:
        """`replace` with the list's objects in `compact` form, pausing (yielding) after each
        object; done when exhausted.

        Objects are applied first and the vanished ones released at the end, so between two
        steps the state holds at least every port the list shows, never fewer. The list is
        emptied as it is applied (see `consumed`).
        """


def consumed(items: list[Item]) -> Iterator[Item]:
    """The items of `items` in order, each dropped from the list as it is handed out.

    A decoded list of 30,000 pods is ~3 million objects, and freeing them in one `del` held the
    event loop for 262 ms; taken this way, each object is freed in the step that applied it,
    inside the caller's time slices. `items` is empty afterwards.
    """
    items.reverse()
    pop = items.pop
    while items:
        yield pop()


def emptied(held: dict[Any, Any] | set[Any]) -> Iterator[None]:
    """Empty `held` one entry per step (a step for the caller's time slices).

    A relist's bookkeeping (the raw shapes of 21,000 listed pods, the set of their UIDs) freed
    by one `clear()`, or all at once when it went out of scope, held the event loop for 3-6 ms
    where a slice of work is meant to last 0.5 ms.
    """
    pop = held.popitem if isinstance(held, dict) else held.pop
    while held:
        pop()
        yield
