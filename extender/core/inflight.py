"""Tentative reservations for pods between the scheduler's filter call and their binding.

Pure. The scheduler decides a pod's node after our filter answers and binds it asynchronously,
so filter(B) can arrive before bind(A). A pod that passed some nodes holds a tentative claim on
all of them until its bind (or the informer) settles where it went, the watch shows that the
scheduler gave up on it, or it expires; a conflicting pod is never passed onto a node that an
in-flight pod may take.

The reservations are indexed by port, as the PortIndex is: `(protocol, port) -> {uid: claims}`
for single ports and narrow ranges, `(protocol, first, last) -> {uid: claims}` for wide ranges.
A collision check costs O(ports of the pod x reservations on those ports), and the node work
is one set intersection per colliding in-flight pod, never claims x claims.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from extender.core.pods import PodPorts
from extender.core.ports import RANGE_EXPANSION_LIMIT, Claim
from extender.core.portspec import WILDCARD

_Holders = dict[str, list[Claim]]
"""uid of an in-flight pod -> its claims on one port (or one wide range)."""
_K = TypeVar("_K")


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

    def reason(self, claim: Claim) -> str:
        """Why a node this pod may take is refused to a pod needing `claim`'s port.

        Names the port that collides and the pod's workload, so the reason is the same on every
        node (the scheduler groups reasons by exact string); formatted once per colliding pod.
        """
        where = claim.ip or "every address"
        return (
            f"{claim.spec} on {where} may be taken by {self.pod.owner_text}, which is being "
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
    """The tentative reservations, keyed by pod UID, oldest first, indexed by port."""

    def __init__(self, max_entries: int = DEFAULT_MAX_TENTATIVE) -> None:
        self._by_uid: dict[str, Tentative] = {}
        self._max_entries = max_entries
        self._points: dict[tuple[str, int], _Holders] = {}
        self._ranges: dict[tuple[str, int, int], _Holders] = {}

    def __len__(self) -> int:
        return len(self._by_uid)

    def hold(self, pod: PodPorts, passed: Sequence[str], expires: float) -> None:
        """Record (or refresh) `pod` as possibly going to any of `passed`."""
        old = self._by_uid.pop(pod.uid, None)  # a refreshed reservation becomes the newest
        if old is not None and old.pod.wanted != pod.wanted:
            self._unindex(old)
            old = None
        self._by_uid[pod.uid] = Tentative(pod, passed, expires)
        if old is None:
            self._index(pod)
        while len(self._by_uid) > self._max_entries:
            self._unindex(self._by_uid.pop(next(iter(self._by_uid))))

    def get(self, uid: str) -> Tentative | None:
        return self._by_uid.get(uid)

    def take(self, uid: str) -> Tentative | None:
        """Remove and return the tentative reservation of `uid` (its node is now known)."""
        tentative = self._by_uid.pop(uid, None)
        if tentative is not None:
            self._unindex(tentative)
        return tentative

    def expire(self, now: float) -> list[Tentative]:
        """Drop and return the reservations whose time is up."""
        gone = [t for t in self._by_uid.values() if t.expires <= now]
        for tentative in gone:
            del self._by_uid[tentative.pod.uid]
            self._unindex(tentative)
        return gone

    def blocking(
        self, wanted: Sequence[Claim], uid: str, candidates: Collection[str], now: float
    ) -> dict[str, str]:
        """node -> why it is refused: an in-flight pod that may take a port `wanted` needs there.

        Each in-flight pod is looked at once, on the first of `wanted`'s ports it collides on;
        that port is the one the reason names.
        """
        if not self._by_uid or (len(self._by_uid) == 1 and uid in self._by_uid):
            return {}  # nothing in flight but (perhaps) this pod itself: the common case
        colliding: dict[str, Claim] = {}
        for want in wanted:
            for holders in self._holders_for(want):
                for other, claims in holders.items():
                    if other in colliding or other == uid:
                        continue
                    for claim in claims:
                        if want.ip == WILDCARD or claim.ip in (WILDCARD, want.ip):
                            colliding[other] = want
                            break
        found: dict[str, str] = {}
        for other, want in colliding.items():
            tentative = self._by_uid[other]
            if tentative.expires <= now:
                continue
            nodes = tentative.nodes.intersection(candidates)
            if nodes:
                reason = tentative.reason(want)
                for node in nodes:
                    found.setdefault(node, reason)
        return found

    def all(self) -> Iterable[Tentative]:
        return self._by_uid.values()

    # --- the port index ---------------------------------------------------------------------

    def _index(self, pod: PodPorts) -> None:
        uid = pod.uid
        for claim in pod.wanted:
            if claim.last - claim.first < RANGE_EXPANSION_LIMIT:
                for port in range(claim.first, claim.last + 1):
                    self._points.setdefault((claim.protocol, port), {}).setdefault(uid, []).append(
                        claim
                    )
            else:
                wide = (claim.protocol, claim.first, claim.last)
                self._ranges.setdefault(wide, {}).setdefault(uid, []).append(claim)

    def _unindex(self, tentative: Tentative) -> None:
        uid = tentative.pod.uid
        for claim in tentative.pod.wanted:
            if claim.last - claim.first < RANGE_EXPANSION_LIMIT:
                for port in range(claim.first, claim.last + 1):
                    _drop(self._points, (claim.protocol, port), uid)
            else:
                _drop(self._ranges, (claim.protocol, claim.first, claim.last), uid)

    def _holders_for(self, want: Claim) -> Iterator[_Holders]:
        """The holder tables of every reserved port or range overlapping `want`'s ports."""
        span = want.last - want.first + 1
        if span <= max(RANGE_EXPANSION_LIMIT, len(self._points)):
            for port in range(want.first, want.last + 1):
                holders = self._points.get((want.protocol, port))
                if holders:
                    yield holders
        else:
            for (protocol, port), holders in self._points.items():
                if protocol == want.protocol and want.first <= port <= want.last:
                    yield holders
        for (protocol, first, last), holders in self._ranges.items():
            if protocol == want.protocol and first <= want.last and want.first <= last:
                yield holders


def _drop(table: dict[_K, _Holders], key: _K, uid: str) -> None:
    """Remove `uid` from one port's holders, and the port's entry once nobody holds it."""
    holders = table.get(key)
    if holders is not None and holders.pop(uid, None) is not None and not holders:
        del table[key]
