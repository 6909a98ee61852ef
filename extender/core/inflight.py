"""Tentative reservations for pods between the scheduler's filter call and their binding.

Pure. The scheduler decides a pod's node after our filter answers and binds it asynchronously,
so filter(B) can arrive before bind(A). A pod that passed some nodes holds a tentative claim on
all of them until its bind (or the informer) settles where it went, or until it expires; a
conflicting pod is never passed onto a node that an in-flight pod may take.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from extender.core.pods import PodPorts
from extender.core.ports import Claim


@dataclass(slots=True)
class Tentative:
    """An in-flight pod and the nodes it passed in its latest filter call."""

    pod: PodPorts
    passed: Sequence[str]
    expires: float
    _passed_set: frozenset[str] | None = field(default=None, repr=False)

    @property
    def nodes(self) -> frozenset[str]:
        # Built lazily: most tentative reservations settle before anyone asks.
        if self._passed_set is None:
            self._passed_set = frozenset(self.passed)
        return self._passed_set

    @property
    def reason(self) -> str:
        claim = self.pod.claims[0] if self.pod.claims else self.pod.wanted[0]
        where = claim.ip or "every address"
        return (
            f"{claim.spec} on {where} may be taken by pod {self.pod.key}, which is being "
            "scheduled (in flight); retry after it binds"
        )


DEFAULT_MAX_TENTATIVE = 256
"""How many tentative reservations are kept at most (oldest dropped first).

Each keeps the node names its pod passed, up to ~0.4 MB for 5,000 candidates, so a storm of
pods that fail after our filter (a Reserve or PreBind failure: no bind ever comes) must not grow
memory without bound. The scheduler decides one pod at a time, so the reservations that matter
are the most recent ones; a pod that binds later is still held by its binding.
"""


class InFlight:
    """The tentative reservations, keyed by pod UID, oldest first."""

    def __init__(self, max_entries: int = DEFAULT_MAX_TENTATIVE) -> None:
        self._by_uid: dict[str, Tentative] = {}
        self._max_entries = max_entries

    def __len__(self) -> int:
        return len(self._by_uid)

    def hold(self, pod: PodPorts, passed: Sequence[str], expires: float) -> None:
        """Record (or refresh) `pod` as possibly going to any of `passed`."""
        self._by_uid.pop(pod.uid, None)  # a refreshed reservation becomes the newest
        self._by_uid[pod.uid] = Tentative(pod, passed, expires)
        while len(self._by_uid) > self._max_entries:
            del self._by_uid[next(iter(self._by_uid))]

    def get(self, uid: str) -> Tentative | None:
        return self._by_uid.get(uid)

    def take(self, uid: str) -> Tentative | None:
        """Remove and return the tentative reservation of `uid` (its node is now known)."""
        return self._by_uid.pop(uid, None)

    def expire(self, now: float) -> list[Tentative]:
        """Drop and return the reservations whose time is up."""
        gone = [t for t in self._by_uid.values() if t.expires <= now]
        for tentative in gone:
            del self._by_uid[tentative.pod.uid]
        return gone

    def blocking(
        self, wanted: Sequence[Claim], uid: str, candidates: Collection[str], now: float
    ) -> dict[str, Tentative]:
        """node -> an in-flight pod that may take a port `wanted` needs there."""
        if not self._by_uid:
            return {}
        found: dict[str, Tentative] = {}
        for other_uid, tentative in self._by_uid.items():
            if other_uid == uid or tentative.expires <= now:
                continue
            if not _any_collision(wanted, tentative.pod.wanted):
                continue
            for node in tentative.nodes.intersection(candidates):
                found.setdefault(node, tentative)
        return found

    def all(self) -> Iterable[Tentative]:
        return self._by_uid.values()


def _any_collision(left: Sequence[Claim], right: Sequence[Claim]) -> bool:
    return any(a.collides(b) for a in left for b in right)
