"""What an informer feeds: the receiving side of list/watch for one resource kind.

The informer (extender/kube/informer.py) knows HTTP and the watch protocol; the cluster state knows
ports. This Protocol is the only thing they share, so either side can be tested alone.
"""

from __future__ import annotations

from typing import Any, Protocol

RawObject = dict[str, Any]
"""An undecoded Kubernetes object as parsed by orjson (a Pod or a Node)."""


class ObjectSink(Protocol):
    """Receives one resource kind's objects, in the order the API server produced them."""

    def upsert(self, raw: RawObject) -> None:
        """An ADDED or MODIFIED object (also every object of the initial list)."""

    def delete(self, raw: RawObject) -> None:
        """A DELETED object (its last known state)."""

    def replace(self, raws: list[RawObject]) -> None:
        """A complete (re)list: every object not in `raws` is gone and must release what it held."""
