"""Keep the cyclic garbage collector away from the filter call's tail latency.

A loaded cluster is ~10^5 long-lived objects (claims, records, strings). Without care, a full
collection triggered by ordinary request garbage scans them all: pauses of 10-140 ms were
measured while serving (bench/profile_server.py). After the initial load or informer sync we
freeze what exists into the permanent generation, and make collections rarer: the index holds
no reference cycles, so young garbage is freed by reference counting anyway.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 50_000
"""Allocations between young collections (CPython's default is 700)."""


def freeze_heap() -> None:
    """Collect once, freeze everything alive, and raise the young-generation threshold."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
