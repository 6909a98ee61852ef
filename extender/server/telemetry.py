"""What the metrics read from the cluster state at scrape time: index size and live conflicts.

Kept out of the request path: Prometheus scrapes every 15-60 s, so the work here may be
O(claims), while a filter call must stay O(candidates).
"""

from __future__ import annotations

from extender.core.cluster import Cluster
from extender.core.ports import ClaimKind, PortIndex
from extender.server.metrics import Metrics
from extender.server.readiness import Readiness

POD_KINDS = frozenset({ClaimKind.HOST_PORT, ClaimKind.HOST_NETWORK, ClaimKind.LISTEN})
"""Claims of running pods: the ones that can be in a live conflict."""


def live_conflicts(index: PortIndex) -> dict[str, int]:
    """node -> pod claims there that collide with a claim of another owner, right now.

    A pod's claim colliding with another pod's, a node-reserved or cluster-reserved port, or an
    unexplained socket the node agent saw. In-flight reservations are not live yet (they are not
    pod kinds, and a pod colliding only with one is not counted); two claims of one pod never
    conflict with each other.
    """
    return {
        node: len(claims)
        for node, claims in index.colliding_claims(POD_KINDS, ignore=(ClaimKind.IN_FLIGHT,)).items()
    }


def observe_cluster(metrics: Metrics, cluster: Cluster, readiness: Readiness) -> None:
    """Export index size, readiness, reservations and live conflicts of `cluster` at scrape."""
    index = cluster.index
    metrics.observe_index(lambda: (index.node_count(), index.claim_count()))
    metrics.observe_readiness(readiness)
    metrics.observe_conflicts(lambda: live_conflicts(index))
    metrics.observe_in_flight(lambda: len(cluster.in_flight) + cluster.bound_reservations())
