"""The claim record every tool prints, and its stable JSON form.

Pure. A `ClaimView` is a `Claim` as an operator reads it: which pod (if any) holds it, and
whether it counts right now (`state`), which the index alone cannot say for observed listeners
(stale or explained by a pod) and tentative in-flight reservations (not in the index at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from extender.core.cluster import Cluster
from extender.core.pods import in_flight_owner
from extender.core.ports import Claim, ClaimKind

ACTIVE = "active"
"""The claim blocks the port now."""
STALE = "stale"
"""An observed listener whose observation is too old to count."""
EXPLAINED = "explained"
"""An observed listener that a pod's own claim accounts for (not counted twice)."""
TENTATIVE = "tentative"
"""A pod between filter and bind that passed this node; it may or may not land here."""

POD_KINDS = frozenset({ClaimKind.HOST_PORT, ClaimKind.HOST_NETWORK, ClaimKind.LISTEN})

_KIND_TEXT = {
    ClaimKind.HOST_PORT: "hostPort",
    ClaimKind.HOST_NETWORK: "hostNetwork (declared)",
    ClaimKind.LISTEN: "hostNetwork (annotated)",
    ClaimKind.NODE_RESERVED: "node-reserved",
    ClaimKind.CLUSTER_RESERVED: "cluster-reserved",
    ClaimKind.OBSERVED: "observed",
    ClaimKind.IN_FLIGHT: "in-flight",
}


def port_text(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


@dataclass(frozen=True, slots=True)
class ClaimView:
    """One claim as shown to an operator."""

    protocol: str
    first: int
    last: int
    address: str
    """Normalised host IP; "" is every address."""
    kind: ClaimKind
    state: str
    holder: str
    pod: str | None
    """`namespace/name` of the pod behind the claim, if a pod holds it."""

    @property
    def ports(self) -> str:
        return port_text(self.first, self.last)

    @property
    def spec(self) -> str:
        return f"{self.ports}/{self.protocol}"

    @property
    def address_text(self) -> str:
        return self.address or "*"

    @property
    def kind_text(self) -> str:
        """The kind as a person reads it, with the state when it is not plainly active."""
        text = _KIND_TEXT[self.kind]
        return text if self.state == ACTIVE else f"{text} ({self.state})"

    def as_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "ports": self.ports,
            "first": self.first,
            "last": self.last,
            "address": self.address_text,
            "kind": self.kind.value,
            "state": self.state,
            "holder": self.holder,
            "pod": self.pod,
        }


def view_of(cluster: Cluster, claim: Claim, state: str = ACTIVE) -> ClaimView:
    """A claim from the index, with the pod behind it looked up."""
    return ClaimView(
        claim.protocol,
        claim.first,
        claim.last,
        claim.ip,
        claim.kind,
        state,
        claim.holder,
        pod_key(cluster, claim),
    )


def pod_key(cluster: Cluster, claim: Claim) -> str | None:
    """`namespace/name` of the pod holding `claim`, for pod and in-flight claims."""
    if claim.kind in POD_KINDS:
        uid = claim.owner
    elif claim.kind is ClaimKind.IN_FLIGHT:
        uid = claim.owner.removeprefix(in_flight_owner(""))
    else:
        return None
    pod = cluster.pods_by_uid.get(uid)
    if pod is not None:
        return pod.key
    tentative = cluster.in_flight.get(uid)
    return tentative.pod.key if tentative is not None else None


def sort_key(view: ClaimView) -> tuple[str, int, int, str, str]:
    return (view.protocol, view.first, view.last, view.address, view.holder)
