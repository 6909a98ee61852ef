"""Keep the cyclic garbage collector away from the filter call's tail latency.

A loaded cluster is ~10^5 long-lived objects (claims, records, strings). Without care, a full
collection triggered by ordinary request garbage scans them all: pauses of 10-140 ms were
measured while serving (bench/profile_server.py). After the initial load or informer sync we
freeze what exists into the permanent generation, which full collections skip. The thresholds
stay at CPython's defaults: raising the young generation's (tried: 50,000) made each young
collection scan a whole request's garbage at once, 5-23 ms, worse for the tail.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


class _Pauses:
    """The collector_paused() blocks open right now, in every task: the collector runs again
    only once the last of them ends."""

    open = 0
    enabled_before = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block; the collector's state is restored after.

    Counted, because the holders are concurrent tasks, not nested calls: the node and pod
    informers relist at the same time after a 410, and when the short node list ended its pause
    by re-enabling the collector, the rest of the pod list was decoded with it on. Full
    collections over the growing list then stalled requests for 150-630 ms each (bench.busy).
    """
    if _Pauses.open == 0:
        _Pauses.enabled_before = gc.isenabled()
        gc.disable()
    _Pauses.open += 1
    try:
        yield
    finally:
        _Pauses.open -= 1
        if _Pauses.open == 0 and _Pauses.enabled_before:
            gc.enable()


@contextlib.contextmanager
def loading(*, collect: bool = True) -> Iterator[None]:
    """Hold the collector off while a cluster loads, then freeze what was loaded.

    Loading creates ~10^6 dicts that mostly live on; every full collection on the way rescans
    all of them (the ingest bench: 16 s of decoding with the collector on, 6 s without). The
    loaded objects hold no reference cycles, so nothing is lost by collecting once at the end.
    `collect=False` freezes without that collection: for a server already answering requests
    (live mode), where a full collection over the synced cluster stalls the event loop (243 ms
    at 30,000 pods in bench.busy, more at 150,000); the little cyclic garbage of the sync is
    frozen with the rest instead.
    """
    with collector_paused():
        try:
            yield
        finally:
            freeze_heap(collect=collect)


def freeze_heap(*, collect: bool = True) -> None:
    """Collect once (unless told not to), then freeze everything alive out of reach."""
    if collect:
        gc.collect()
    gc.freeze()


REFREEZE_SECONDS = 60.0
"""How often a serving process moves what has lived on since the last freeze out of reach."""


def refreeze() -> bool:
    """Collect the young generations, then freeze what survives; False (and nothing done)
    while a collector_paused() block is open.

    After the first freeze the long-lived heap grows again with every pod applied: at 147,414
    pods a full collection over what the watch and the calls had added since the sync took
    48 ms during the busy benchmark's rounds. Freezing once a minute keeps a full collection
    down to a minute's survivors. The young collection first (~1 ms) keeps the frozen heap
    free of the cyclic garbage requests leave behind; only cycles already old enough for the
    oldest generation are frozen with it. Inside a pause (a relist decoding its pages) the
    young generations hold the whole list: collecting them then would be the stall the pause
    avoids.
    """
    if _Pauses.open:
        return False
    gc.collect(1)
    gc.freeze()
    return True
