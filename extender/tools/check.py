"""`check`: before installing a workload, which nodes its host ports would keep it off, and why.

Pure. The workload's pod (from its template, decoded like any pod the scheduler asks about) is
matched against the port index on every node it could be placed on (`placement`). Pods of the
same workload already in the cluster are assumed replaced: their ports are ignored, as a
DaemonSet rolling update (delete, then create) releases them first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extender.core.cluster import Cluster
from extender.core.listeners import ListenPlan, plan_listen_ports
from extender.core.pods import TERMINAL_PHASES, PodShapeError, decode_pod
from extender.core.portspec import format_port_specs
from extender.core.sinks import RawObject
from extender.errors import PortSpecError
from extender.tools.manifests import ManifestError, Manifests, Workload
from extender.tools.placement import (
    NodeFacts,
    PlacementError,
    constraints_of,
    label_selector_matches,
)

PLACEMENT_NOTE = (
    "placement honours nodeName, nodeSelector, required node affinity and taints/tolerations; "
    "resources, pod (anti-)affinity, topology spread and volumes are not checked"
)


@dataclass(frozen=True, slots=True)
class BlockedNode:
    node: str
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UntargetedNode:
    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class WorkloadCheck:
    """The answer for one workload."""

    workload: Workload
    host_ports: str
    """The ports its pod needs free on a node, in the annotation syntax ("" if none)."""
    exclusive: bool
    """Two of its pods cannot share a node (they would take the same host ports)."""
    blocked: tuple[BlockedNode, ...]
    free: tuple[str, ...]
    untargeted: tuple[UntargetedNode, ...]
    replacing: tuple[str, ...]
    """Its existing pods, whose ports are assumed released by the rollout."""
    listen: ListenPlan = field(default_factory=ListenPlan)
    """What the webhook's /materialise would declare from its hostports.dev/listen entries."""

    @property
    def fits(self) -> bool:
        """Every pod it wants can get its ports: a DaemonSet on every targeted node, others
        on enough nodes for their pods (exclusive) or on at least one."""
        if not self.host_ports:
            return True
        if self.workload.replicas is None:
            return not self.blocked
        needed = self.workload.replicas if self.exclusive else min(self.workload.replicas, 1)
        return len(self.free) >= needed

    @property
    def summary(self) -> str:
        targeted = len(self.blocked) + len(self.free)
        if not self.host_ports:
            return "no host ports: ports never keep it off a node"
        if self.workload.replicas is None:
            if not self.blocked:
                return f"fits on all {targeted:,} targeted nodes"
            return f"would fail on {len(self.blocked):,} of {targeted:,} targeted nodes"
        replicas = self.workload.replicas
        if self.exclusive and replicas > len(self.free):
            pending = replicas - len(self.free)
            return (
                f"{replicas:,} pods need {replicas:,} nodes, {len(self.free):,} free: "
                f"{pending:,} would stay Pending"
            )
        if not self.free:
            return "no node can take it"
        return f"fits: {len(self.free):,} free nodes for {replicas:,} pods"

    def as_json(self) -> dict[str, Any]:
        workload = self.workload
        return {
            "kind": workload.kind,
            "namespace": workload.namespace,
            "name": workload.name,
            "source": workload.source,
            "host_ports": self.host_ports,
            "replicas": workload.replicas,
            "exclusive": self.exclusive,
            "fits": self.fits,
            "summary": self.summary,
            "blocked": [{"node": b.node, "reasons": list(b.reasons)} for b in self.blocked],
            "free": list(self.free),
            "untargeted": [{"node": u.node, "reason": u.reason} for u in self.untargeted],
            "replacing": list(self.replacing),
            "would_declare": [
                {"port": p.spec, "name": p.name, "container": p.container_name}
                for p in self.listen.added
            ],
            "declare_notes": [n for n in (self.listen.error, *self.listen.notes) if n],
        }


@dataclass(frozen=True, slots=True)
class CheckReport:
    nodes: int
    workloads: tuple[WorkloadCheck, ...]
    skipped: tuple[str, ...]

    @property
    def fits(self) -> bool:
        return all(check.fits for check in self.workloads)

    def as_json(self) -> dict[str, Any]:
        return {
            "fits": self.fits,
            "nodes": self.nodes,
            "approximate": PLACEMENT_NOTE,
            "workloads": [check.as_json() for check in self.workloads],
            "skipped": list(self.skipped),
        }


def check_manifests(
    cluster: Cluster,
    nodes: Sequence[NodeFacts],
    raw_pods: Sequence[RawObject],
    manifests: Manifests,
) -> CheckReport:
    """Check every workload of `manifests` against the cluster as it is."""
    return CheckReport(
        len(nodes),
        tuple(check_workload(cluster, nodes, raw_pods, w) for w in manifests.workloads),
        manifests.skipped,
    )


def check_workload(
    cluster: Cluster,
    nodes: Sequence[NodeFacts],
    raw_pods: Sequence[RawObject],
    workload: Workload,
) -> WorkloadCheck:
    """Where `workload`'s pods could not run because of ports, and where they could."""
    try:
        pod = decode_pod(workload.raw_pod, strict=True)
        constraints = constraints_of(
            workload.raw_pod["spec"], daemonset=workload.kind == "DaemonSet"
        )
        own = _existing_pods(workload, raw_pods)
    except (PodShapeError, PlacementError, PortSpecError) as error:
        raise ManifestError(f"{workload.source}: {workload.key}: {error}") from error
    untargeted: list[UntargetedNode] = []
    targeted: list[str] = []
    for node in sorted(nodes, key=lambda n: n.name):
        reason = constraints.reason(node)
        if reason is None:
            targeted.append(node.name)
        else:
            untargeted.append(UntargetedNode(node.name, reason))
    ignore = set(own)
    wanted = pod.wanted
    held = cluster.index.conflicts(wanted, set(targeted), ignore) if wanted else {}
    blocked = tuple(
        BlockedNode(
            node,
            tuple(
                dict.fromkeys(
                    claim.reason
                    for _want, claim in cluster.index.conflicts_on(node, wanted, ignore)
                )
            ),
        )
        for node in targeted
        if node in held
    )
    return WorkloadCheck(
        workload,
        format_port_specs(claim.port_spec for claim in wanted),
        bool(pod.claims),
        blocked,
        tuple(node for node in targeted if node not in held),
        tuple(untargeted),
        tuple(sorted(key for uid, key in own.items() if uid in cluster.pods_by_uid)),
        plan_listen_ports(workload.raw_pod),
    )


def _existing_pods(workload: Workload, raw_pods: Sequence[RawObject]) -> dict[str, str]:
    """uid -> `namespace/name` of the workload's own pods already in the cluster."""
    found: dict[str, str] = {}
    for raw in raw_pods:
        metadata = raw.get("metadata")
        if not isinstance(metadata, Mapping):
            continue
        namespace = metadata.get("namespace") or "default"
        name = metadata.get("name")
        status = raw.get("status")
        phase = status.get("phase") if isinstance(status, Mapping) else None
        if namespace != workload.namespace or phase in TERMINAL_PHASES:
            continue
        labels = metadata.get("labels")
        if workload.raw_selector is None:
            mine = workload.kind == "Pod" and name == workload.name
        else:
            mine = isinstance(labels, Mapping) and label_selector_matches(
                workload.raw_selector, labels
            )
        if mine:
            found[str(metadata.get("uid") or f"{namespace}/{name}")] = f"{namespace}/{name}"
    return found
