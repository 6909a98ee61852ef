"""What the metrics read from the cluster state at scrape time: index size and live conflicts.

Kept out of the request path: Prometheus scrapes every 15-60 s, so the work here may be
O(claims), while a filter call must stay O(candidates).
"""

from __future__ import annotations

from collections import defaultdict

from extender.cluster import Cluster
from extender.metrics import Metrics
from extender.ports import Claim, ClaimKind, PortIndex
from extender.readiness import Readiness

POD_KINDS = frozenset({ClaimKind.HOST_PORT, ClaimKind.HOST_NETWORK, ClaimKind.LISTEN})
"""Claims of running pods: the ones that can be in a live conflict."""


def live_conflicts(index: PortIndex) -> dict[str, int]:
    """node -> pod claims there that collide with a claim of another owner, right now.

    A pod's claim colliding with another pod's, a node-reserved or cluster-reserved port, or an
    unexplained socket the node agent saw. In-flight reservations are not live yet; two claims
    of one pod never conflict with each other.
    """
    by_node: dict[str, list[Claim]] = defaultdict(list)
    for _owner, node, claims in index.owners():
        by_node[node].extend(claim for claim in claims if claim.kind is not ClaimKind.IN_FLIGHT)
    found: dict[str, int] = {}
    for node, held in by_node.items():
        everything = [*held, *index.cluster_reserved]
        count = sum(
            1
            for claim in held
            if claim.kind in POD_KINDS
            and any(other.owner != claim.owner and claim.collides(other) for other in everything)
        )
        if count:
            found[node] = count
    return found


def observe_cluster(metrics: Metrics, cluster: Cluster, readiness: Readiness) -> None:
    """Export index size, readiness, reservations and live conflicts of `cluster` at scrape."""
    index = cluster.index
    metrics.observe_index(lambda: (len(index.node_names()), index.claim_count()))
    metrics.observe_readiness(readiness)
    metrics.observe_conflicts(lambda: live_conflicts(index))
    metrics.observe_in_flight(lambda: len(cluster.in_flight) + cluster.bound_reservations())
