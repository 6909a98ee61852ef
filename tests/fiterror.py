"""The message kube-scheduler builds from every node's reasons when no node fits (a FitError).

Reproduces the scheduler's rule (protocol.md §1.11, `FitError.Error` upstream): reasons are
grouped by exact string, each group printed as `<count> <reason>`, the groups sorted as strings
and joined with ", ", after `0/<all nodes> nodes are available: `, ending with a full stop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping


def fit_error_message(all_nodes: int, reasons: Mapping[str, str]) -> str:
    """What `kubectl describe pod` shows for `reasons` (node -> reason) out of `all_nodes`."""
    histogram = sorted(f"{count} {reason}" for reason, count in Counter(reasons.values()).items())
    return f"0/{all_nodes} nodes are available: {', '.join(histogram)}."
