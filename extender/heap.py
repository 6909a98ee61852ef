"""Keep the cyclic garbage collector away from the filter call's tail latency.

A loaded cluster is ~10^5 long-lived objects (claims, records, strings). Without care, a full
collection triggered by ordinary request garbage scans them all: pauses of 10-140 ms were
measured while serving (bench/profile_server.py). After the initial load or informer sync we
freeze what exists into the permanent generation, which full collections skip. The thresholds
stay at CPython's defaults: raising the young generation's (tried: 50,000) made each young
collection scan a whole request's garbage at once, 5-23 ms, worse for the tail.
"""

from __future__ import annotations

import gc


def freeze_heap() -> None:
    """Collect once, then freeze everything alive out of the collector's reach."""
    gc.collect()
    gc.freeze()
