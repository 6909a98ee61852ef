"""The scheduler's three questions, answered from the cluster state: filter, score, preempt.

No I/O and no waiting: the HTTP layer decides whether to wait for in-flight pods and calls
again. Per-node Python work is kept to what the answer itself needs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import filterfalse

from extender.cluster import Cluster
from extender.inflight import Tentative
from extender.pods import PodPorts, in_flight_owner
from extender.ports import Claim
from extender.wire import Victims

MAX_SCORE = 10
FLAT_SCORE = 0
"""The score of every node for a pod without host-level ports: no opinion."""


@dataclass(slots=True)
class FilterVerdict:
    """Which candidates a pod may not go to and why, and which are only held by in-flight pods."""

    rejected: dict[str, str]
    in_flight: dict[str, Tentative] = field(default_factory=dict)
    held: dict[str, Claim] = field(default_factory=dict)
    """node -> the claim that rejected it (its kind labels the rejection metric)."""

    def final(self) -> dict[str, str]:
        """Rejections, counting nodes an in-flight pod may take as rejected too."""
        if not self.in_flight:
            return self.rejected
        merged = {node: tentative.reason for node, tentative in self.in_flight.items()}
        merged.update(self.rejected)
        return merged


def filter_pod(cluster: Cluster, pod: PodPorts, candidates: Collection[str]) -> FilterVerdict:
    """Reject the candidates where one of the pod's ports collides with a claim held there."""
    wanted = pod.wanted
    ignore = (pod.uid, in_flight_owner(pod.uid))
    held = cluster.index.conflicts(wanted, candidates, ignore)
    rejected = {node: claim.reason for node, claim in held.items()}
    in_flight = cluster.in_flight.blocking(wanted, pod.uid, candidates, cluster.clock())
    if in_flight and rejected:
        in_flight = {node: t for node, t in in_flight.items() if node not in rejected}
    return FilterVerdict(rejected, in_flight, held)


def passed_nodes(candidates: Sequence[str], rejected: Mapping[str, str]) -> list[str]:
    """The candidates not rejected, in the scheduler's order."""
    if not rejected:
        return list(candidates)
    return list(filterfalse(rejected.__contains__, candidates))


def score_nodes(
    cluster: Cluster, pod: PodPorts, candidates: Sequence[str]
) -> list[tuple[str, int]]:
    """0..10 per candidate: spread host-port workloads, avoid fresh UDP owner switches.

    A node scores 10 minus the number of pods holding host-level ports there (floor 0); a node
    where one of the pod's UDP ports recently changed owner between a hostPort pod and a
    host-network listener scores 0, because stale conntrack entries would blackhole its clients.
    """
    if not pod.wanted:
        return [(node, FLAT_SCORE) for node in candidates]
    counts = cluster.index.pod_counts
    risky = cluster.index.udp_switch_risks(pod.wanted, pod.family)
    scores = []
    for node in candidates:
        if node in risky:
            scores.append((node, 0))
        else:
            scores.append((node, max(0, MAX_SCORE - counts.get(node, 0))))
    return scores


def filter_preemption(
    cluster: Cluster, pod: PodPorts, proposals: Mapping[str, Victims]
) -> dict[str, Victims]:
    """Keep the nodes where evicting the proposed victims frees every port the pod needs,
    and where no protected pod would be evicted for a port."""
    kept: dict[str, Victims] = {}
    ignore = {pod.uid, in_flight_owner(pod.uid)}
    for node, victims in proposals.items():
        evicted = set(victims.uids)
        blocked = False
        for _want, held in cluster.index.conflicts_on(node, pod.wanted, ignore):
            if held.owner not in evicted or _is_protected(cluster, held.owner):
                blocked = True
                break
        if not blocked:
            kept[node] = victims
    return kept


def _is_protected(cluster: Cluster, uid: str) -> bool:
    if uid in cluster.protected_uids:
        return True
    held = cluster.index.claims_of(uid)
    if held is None or not cluster.protected_ports:
        return False
    return any(
        claim.protocol == spec.protocol
        and claim.first <= spec.last
        and spec.first <= claim.last
        and (not claim.ip or not spec.ip or claim.ip == spec.ip)
        for claim in held[1]
        for spec in cluster.protected_ports
    )
