"""The scheduler's three questions, answered from the cluster state: filter, score, preempt.

No I/O and no waiting: the HTTP layer decides whether to wait for in-flight pods and calls
again. Per-node Python work is kept to what the answer itself needs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from itertools import filterfalse
from typing import NamedTuple

from extender.core.cluster import Cluster
from extender.core.pods import PodPorts, in_flight_owner
from extender.core.ports import SPREAD_MAX_SCORE, Claim, ClaimKind, TableConflicts

FLAT_SCORE = 0
"""The score of every node for a pod without host-level ports: no opinion."""


@dataclass(frozen=True, slots=True)
class Victims:
    """The pods the scheduler proposes to evict on one node (by UID)."""

    uids: tuple[str, ...]
    pdb_violations: int


@dataclass(slots=True)
class FilterVerdict:
    """Which candidates a pod may go to, which it may not and why, and which are only held by
    in-flight pods."""

    passed: list[str]
    rejected: dict[str, str]
    in_flight: dict[str, str] = field(default_factory=dict)
    """node -> why an in-flight pod may take it (only nodes not rejected otherwise)."""
    held: dict[str, Claim] = field(default_factory=dict)
    """node -> the claim that rejected it (its kind labels the rejection metric)."""
    held_kinds: Mapping[ClaimKind, int] | None = None
    """How many of `held` each kind of claim holds, when it came ready-made (else count it)."""

    def final(self) -> dict[str, str]:
        """Rejections, counting nodes an in-flight pod may take as rejected too."""
        if not self.in_flight:
            return self.rejected
        return {**self.in_flight, **self.rejected}


FEW_HOLDERS = 3
"""Up to this many nodes holding the pod's ports, the candidates are searched for each of them
(a C-level comparison per name, ~15 ns here) instead of each candidate being hashed and looked
up (~80 ns: the names arrive freshly decoded, their hashes not yet computed)."""


def filter_pod(cluster: Cluster, pod: PodPorts, candidates: Collection[str]) -> FilterVerdict:
    """Reject the candidates where one of the pod's ports collides with a claim held there.

    The candidates are walked in C: once per holder when the holders are few (a Deployment's
    hostPort replicas, the usual case), else once with a lookup each (`filterfalse`);
    everything else is proportional to the nodes holding the pod's ports. A held name is refused
    however often it is given; the lookup walk counts on distinct names (the scheduler's are)
    to know that every holder was a candidate, so with a name repeated its rejections may also
    name a holder that was not one.
    """
    wanted = pod.wanted
    ignore = (pod.uid, in_flight_owner(pod.uid))
    held = cluster.index.conflicts(wanted, candidates, ignore, exact=False)
    if not held:
        passed = list(candidates)
    elif len(held) <= FEW_HOLDERS and isinstance(candidates, list):
        passed, held = _without_few(candidates, held)
    else:
        passed = list(filterfalse(held.__contains__, candidates))
        if len(candidates) - len(passed) != len(held):
            # Some holders were not candidates: keep the candidates' entries only. A second
            # C-level pass over the names (their hashes are cached by the first) finds the
            # rejected few; a comprehension over every candidate cost ~50 us at 1,000 names.
            held = {node: held[node] for node in filter(held.__contains__, candidates)}
    kinds: Mapping[ClaimKind, int] | None = None
    if isinstance(held, TableConflicts):
        # One port table rejected exactly these candidates (a port held on every node): its
        # reasons and kind counts are cached with it, not read off 5,000 scattered claims.
        rejected, kinds = held.reasons(), held.kinds()
    else:
        rejected = {node: claim.reason for node, claim in held.items()}
    in_flight = cluster.in_flight.blocking(wanted, pod.uid, passed, cluster.clock())
    if in_flight:
        passed = list(filterfalse(in_flight.__contains__, passed))
    return FilterVerdict(passed, rejected, in_flight, held, kinds)


def _without_few(
    candidates: list[str], held: dict[str, Claim]
) -> tuple[list[str], dict[str, Claim]]:
    """The candidates without the few `held` nodes (every occurrence), and `held` kept to the
    nodes among the candidates: one `list.index` walk per holder, comparisons in C."""
    found: list[tuple[int, str]] = []  # (position, node) of each held candidate
    for node in held:
        position = -1
        while True:
            try:
                position = candidates.index(node, position + 1)
            except ValueError:
                break
            found.append((position, node))
    if not found:
        return list(candidates), {}
    found.sort()
    passed: list[str] = []
    begin = 0
    for position, _node in found:
        passed += candidates[begin:position]
        begin = position + 1
    passed += candidates[begin:]
    kept = dict.fromkeys(node for _position, node in found)  # the candidates' order
    if len(kept) == len(held):
        return passed, held  # every holder is a candidate: the answer as it came
    return passed, {node: held[node] for node in kept}


class NodeScores(NamedTuple):
    """What prioritize answers: each node's score, and what the answer is built from."""

    by_node: Mapping[str, int]
    """node -> score, for the nodes that differ from `default`."""
    default: int
    """The score of every node not in `by_node`."""
    memo: dict[str, bytes] | None
    """Each node's encoded answer entry at its score here (PortIndex.spread_memo), when these
    are the index's own spread scores; None for any other mapping (a UDP-risk answer)."""


def score_nodes(cluster: Cluster, pod: PodPorts) -> NodeScores:
    """Scores 0..10 per node.

    Spread host-port workloads: a node scores 10 minus the number of pods holding host-level
    ports there (floor 0). Avoid fresh UDP owner switches: a node where one of the pod's UDP
    ports recently changed owner between a hostPort pod and a host-network listener scores 0,
    because stale conntrack entries would blackhole its clients. Pods without claims score
    FLAT_SCORE everywhere. Returning a mapping keeps the per-node work to one lookup, done
    while encoding.
    """
    if not pod.wanted:
        return NodeScores({}, FLAT_SCORE, None)
    index = cluster.index
    risky = index.udp_switch_risks(pod.wanted, pod.family)
    if risky:
        return NodeScores(
            {**index.spread_scores, **dict.fromkeys(risky, 0)}, SPREAD_MAX_SCORE, None
        )
    return NodeScores(index.spread_scores, SPREAD_MAX_SCORE, index.spread_memo)


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
    return any(claim.collides(spec) for claim in held[1] for spec in cluster.protected_ports)
