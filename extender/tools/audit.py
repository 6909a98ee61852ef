"""`audit`: the port conflicts that exist in the cluster now, and the risks that are not yet.

Pure. A conflict is two claims on one node, held by different owners, that collide under the
index's conflict rule, at least one of them a pod's (two host-daemon records of the same port,
node-reserved and cluster-reserved, are one daemon). In-flight reservations are left out: they
are not placements yet. Risks:

* `ephemeral-port`: a host-network listener inside the ephemeral port range; the kernel may hand
  the port to an outgoing connection first, and the listener then fails to bind on restart.
* `udp-owner-switch`: a UDP port whose owner changed between a hostPort pod (DNAT) and a
  host-network socket; conntrack entries from before keep sending clients to the old pod IP.
  Evidence comes from the index's history (the running extender) and from finished pods still
  listed on the node (a snapshot: evicted pods stay as `Failed`).

Two lists for the routing install (config/default), facts rather than faults:

* protected holders: running pods that hold host ports and are protected (annotation
  `hostports.dev/protected`, or a `protected_ports` port): the preemption guard refuses a
  scheduler's deletion of these.
* unrouted: running host-port pods that the default scheduler placed although the webhook would
  route them now. Why: the webhook notes it on the pod (`hostports.dev/unrouted`, e.g.
  `scheduler-lease-stale`) when it leaves a pod alone because the scheduler is not alive; a pod
  without the note was created while the webhook was unreachable, or before the install. Listed
  only when some pod in the cluster is routed (the install is in use); on a kubeadm install
  every pod is the default scheduler's anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from extender.core.cluster import Cluster
from extender.core.pods import TERMINAL_PHASES, PodPorts, decode_pod
from extender.core.ports import Claim, ClaimKind
from extender.core.portspec import format_port_specs
from extender.core.routing import (
    ALIVE,
    DEFAULT_SCHEDULER,
    ROUTED,
    UNROUTED_ANNOTATION,
    RoutingPolicy,
    route_decision,
    uses_host_ports,
)
from extender.core.sinks import RawObject
from extender.errors import ExtenderError
from extender.tools.views import POD_KINDS, ClaimView, port_text, view_of

DEFAULT_EPHEMERAL_RANGE = (32768, 60999)
"""Linux's default `net.ipv4.ip_local_port_range`."""

EPHEMERAL_PORT = "ephemeral-port"
UDP_OWNER_SWITCH = "udp-owner-switch"

_SOCKET_POD_KINDS = frozenset({ClaimKind.HOST_NETWORK, ClaimKind.LISTEN})


def parse_ephemeral_range(text: str) -> tuple[int, int]:
    """`FIRST-LAST`, as in /proc/sys/net/ipv4/ip_local_port_range (a tab or space also works)."""
    parts = text.replace("\t", " ").replace("-", " ").split()
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise ExtenderError(f"ephemeral range {text!r}: want FIRST-LAST, e.g. 32768-60999")
    first, last = int(parts[0]), int(parts[1])
    if not 1 <= first <= last <= 65535:
        raise ExtenderError(f"ephemeral range {text!r}: want 1 <= FIRST <= LAST <= 65535")
    return first, last


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two claims on one node that cannot both hold: `ports` on `address` ("" every address)."""

    node: str
    protocol: str
    first_port: int
    last_port: int
    address: str
    claims: tuple[ClaimView, ClaimView]

    @property
    def spec(self) -> str:
        return f"{port_text(self.first_port, self.last_port)}/{self.protocol}"

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "protocol": self.protocol,
            "ports": port_text(self.first_port, self.last_port),
            "address": self.address or "*",
            "claims": [claim.as_json() for claim in self.claims],
        }


@dataclass(frozen=True, slots=True)
class Risk:
    """Not a conflict yet, but it breaks traffic or restarts; `claim` is what holds the port."""

    node: str
    risk: str
    claim: ClaimView
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "risk": self.risk,
            "protocol": self.claim.protocol,
            "ports": self.claim.ports,
            "address": self.claim.address_text,
            "holder": self.claim.holder,
            "pod": self.claim.pod,
            "detail": self.detail,
        }


MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
NO_NOTE = "no webhook note: created while the webhook was unreachable, or before the install"


@dataclass(frozen=True, slots=True)
class ProtectedHolder:
    """A running pod the preemption guard protects, and the host ports it holds."""

    node: str
    pod: str
    ports: str
    why: str

    def as_json(self) -> dict[str, Any]:
        return {"node": self.node, "pod": self.pod, "ports": self.ports, "why": self.why}


@dataclass(frozen=True, slots=True)
class UnroutedPod:
    """A host-port pod the default scheduler placed that the webhook would route now."""

    node: str
    pod: str
    ports: str
    created: str
    why: str

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "pod": self.pod,
            "ports": self.ports,
            "created": self.created,
            "why": self.why,
        }


@dataclass(frozen=True, slots=True)
class AuditReport:
    nodes: int
    ephemeral_range: tuple[int, int]
    conflicts: tuple[Conflict, ...]
    risks: tuple[Risk, ...]
    protected: tuple[ProtectedHolder, ...] = ()
    unrouted: tuple[UnroutedPod, ...] = ()

    @property
    def clean(self) -> bool:
        """No conflicts (risks alone do not make a cluster unclean)."""
        return not self.conflicts

    def as_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "nodes": self.nodes,
            "ephemeral_range": port_text(*self.ephemeral_range),
            "conflicts": [conflict.as_json() for conflict in self.conflicts],
            "risks": [risk.as_json() for risk in self.risks],
            "protected": [holder.as_json() for holder in self.protected],
            "unrouted": [pod.as_json() for pod in self.unrouted],
        }


def audit(
    cluster: Cluster,
    ephemeral_range: tuple[int, int] = DEFAULT_EPHEMERAL_RANGE,
    finished_pods: Sequence[PodPorts] = (),
    raw_pods: Sequence[RawObject] = (),
    routing: RoutingPolicy | None = None,
) -> AuditReport:
    """Conflicts and risks on every node. `finished_pods` are terminal pods decoded as if they
    still ran (their claims are what they held), the snapshot's evidence of owner switches;
    `raw_pods` (when given) are checked against the routing policy for unrouted pods."""
    nodes = sorted(set(cluster.nodes_known) | set(cluster.index.node_names()))
    conflicts: list[Conflict] = []
    risks: list[Risk] = []
    for node in nodes:
        claims = [c for c in cluster.index.claims_on(node) if c.kind is not ClaimKind.IN_FLIGHT]
        conflicts.extend(_conflicts_on(cluster, node, claims))
        risks.extend(_ephemeral_risks(cluster, node, claims, ephemeral_range))
    risks.extend(_switch_risks(cluster, finished_pods))
    risks = sorted(_unique(risks), key=lambda r: (r.node, r.risk, r.claim.protocol, r.claim.first))
    return AuditReport(
        len(nodes),
        ephemeral_range,
        tuple(conflicts),
        tuple(risks),
        protected_holders(cluster),
        unrouted_pods(raw_pods, routing or RoutingPolicy()),
    )


def protected_holders(cluster: Cluster) -> tuple[ProtectedHolder, ...]:
    """Running pods with host ports that the guard protects, by node and pod."""
    found: list[ProtectedHolder] = []
    for uid, pod in cluster.pods_by_uid.items():
        if not pod.node or pod.terminal or not pod.claims:
            continue
        held = format_port_specs(claim.port_spec for claim in pod.claims)
        if uid in cluster.protected_uids:
            found.append(ProtectedHolder(pod.node, pod.key, held, "hostports.dev/protected"))
            continue
        hits = [
            claim.port_spec
            for claim in pod.claims
            if any(claim.collides(spec) for spec in cluster.protected_ports)
        ]
        if hits:
            why = f"protected port {format_port_specs(hits)}"
            found.append(ProtectedHolder(pod.node, pod.key, held, why))
    return tuple(sorted(found, key=lambda h: (h.node, h.pod)))


def unrouted_pods(raw_pods: Sequence[RawObject], policy: RoutingPolicy) -> tuple[UnroutedPod, ...]:
    """Placed host-port pods of the default scheduler that `policy` would route if new."""
    if not any(_scheduler_of(raw) == policy.scheduler_name for raw in raw_pods):
        return ()
    found: list[UnroutedPod] = []
    for raw in raw_pods:
        metadata = raw.get("metadata")
        spec = raw.get("spec")
        status = raw.get("status")
        if not isinstance(metadata, Mapping) or not isinstance(spec, Mapping):
            continue
        phase = status.get("phase") if isinstance(status, Mapping) else None
        annotations = metadata.get("annotations")
        if (
            phase in TERMINAL_PHASES
            or not spec.get("nodeName")
            or _scheduler_of(raw) != DEFAULT_SCHEDULER
            or (isinstance(annotations, Mapping) and MIRROR_ANNOTATION in annotations)
            or not uses_host_ports(raw)
        ):
            continue
        # As the webhook saw it: before the scheduler set nodeName.
        unbound = {**raw, "spec": {k: v for k, v in spec.items() if k != "nodeName"}}
        namespace = str(metadata.get("namespace") or "default")
        if route_decision(unbound, namespace, policy, ALIVE).reason != ROUTED:
            continue
        pod = decode_pod(raw)
        note = annotations.get(UNROUTED_ANNOTATION) if isinstance(annotations, Mapping) else None
        found.append(
            UnroutedPod(
                str(spec["nodeName"]),
                pod.key,
                format_port_specs(claim.port_spec for claim in pod.claims),
                str(metadata.get("creationTimestamp") or ""),
                f"{note} (noted by the webhook)" if note else NO_NOTE,
            )
        )
    return tuple(sorted(found, key=lambda u: (u.node, u.pod)))


def _scheduler_of(raw_pod: RawObject) -> str:
    spec = raw_pod.get("spec")
    name = spec.get("schedulerName") if isinstance(spec, Mapping) else None
    return name if isinstance(name, str) and name else DEFAULT_SCHEDULER


def _conflicts_on(cluster: Cluster, node: str, claims: list[Claim]) -> list[Conflict]:
    """Sweep claims sorted by protocol and first port: O(n log n + colliding pairs)."""
    ordered = sorted(claims, key=lambda c: (c.protocol, c.first, c.last, c.ip, c.holder))
    found: list[Conflict] = []
    # A pod can hold one port twice (declared and annotated): report each pair of holdings once.
    seen: set[frozenset[tuple[str, str, int, int, str]]] = set()
    for index, claim in enumerate(ordered):
        for other in ordered[index + 1 :]:
            if other.protocol != claim.protocol or other.first > claim.last:
                break
            if other.owner == claim.owner or not claim.collides(other):
                continue
            if claim.kind not in POD_KINDS and other.kind not in POD_KINDS:
                continue
            pair = frozenset((_holding(claim), _holding(other)))
            if pair in seen:
                continue
            seen.add(pair)
            found.append(
                Conflict(
                    node,
                    claim.protocol,
                    max(claim.first, other.first),
                    min(claim.last, other.last),
                    claim.ip or other.ip,
                    (view_of(cluster, claim), view_of(cluster, other)),
                )
            )
    return found


def _holding(claim: Claim) -> tuple[str, str, int, int, str]:
    return (claim.owner, claim.protocol, claim.first, claim.last, claim.ip)


def _ephemeral_risks(
    cluster: Cluster, node: str, claims: list[Claim], ephemeral: tuple[int, int]
) -> list[Risk]:
    first, last = ephemeral
    return [
        Risk(
            node,
            EPHEMERAL_PORT,
            view_of(cluster, claim),
            f"host-network listener inside the ephemeral port range {first}-{last}: an "
            "outgoing connection can take the port first, and the bind fails on restart",
        )
        for claim in claims
        if claim.kind in _SOCKET_POD_KINDS and claim.first <= last and first <= claim.last
    ]


def _switch_risks(cluster: Cluster, finished_pods: Sequence[PodPorts]) -> list[Risk]:
    risks: list[Risk] = []
    for node, port, ago in cluster.index.udp_switches():
        for claim in _udp_holders(cluster, node, port):
            risks.append(
                Risk(
                    node,
                    UDP_OWNER_SWITCH,
                    view_of(cluster, claim),
                    f"{port}/UDP changed owner between hostPort and hostNetwork {ago:.0f}s ago: "
                    "stale conntrack entries may still send clients to the old pod IP",
                )
            )
    for old in finished_pods:
        for old_claim in old.claims:
            if old_claim.protocol != "UDP" or not old.node:
                continue
            for claim in cluster.index.claims_on(old.node):
                if (
                    claim.kind in POD_KINDS
                    and claim.kind.family != old_claim.kind.family
                    and claim.collides(old_claim)
                ):
                    risks.append(
                        Risk(
                            old.node,
                            UDP_OWNER_SWITCH,
                            view_of(cluster, claim),
                            f"{old_claim.spec} moved from {old_claim.holder} (finished) to "
                            f"{claim.holder}: stale conntrack entries may still send clients "
                            "to the old pod IP",
                        )
                    )
    return risks


def _udp_holders(cluster: Cluster, node: str, port: int) -> list[Claim]:
    return [
        claim
        for claim in cluster.index.claims_on(node)
        if claim.protocol == "UDP" and claim.first <= port <= claim.last and claim.kind in POD_KINDS
    ]


def _unique(risks: list[Risk]) -> list[Risk]:
    return list(dict.fromkeys(risks))
