"""Which new pods the routing webhook sends to the hostport-aware scheduler, and why not.

Pure (the webhook decides with it at admission; `audit` uses it to find pods the default
scheduler placed that the webhook would route now). The precedence of the checks in
`route_decision` is the contract: the extender's own pods, its namespace and the bootstrap
components (the CNI and kube-proxy, which the second scheduler itself needs: the VPC CNI story)
are never routed; nor is any pod while the scheduler is not alive (`liveness`, from its Lease).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ROUTED_SCHEDULER = "hostport-aware-scheduler"
DEFAULT_SCHEDULER = "default-scheduler"
SELF_LABEL = ("app.kubernetes.io/name", "hostport-extender")
DEFAULT_EXCLUDED_NAMESPACES = frozenset({"hostport-system"})
"""The extender's own namespace: the scheduler and the webhook must start without either."""
DEFAULT_BOOTSTRAP_DAEMONSETS = frozenset(
    {
        "aws-node",  # EKS: the VPC CNI
        "kube-proxy",  # EKS, AKS, kubeadm (GKE runs it as static pods: nodeName is set)
        "calico-node",  # Calico (EKS, AKS, kubeadm)
        "cilium",  # Cilium (EKS, AKS, kubeadm)
        "anetd",  # GKE Dataplane V2 (Cilium)
        "netd",  # GKE
        "azure-cns",  # AKS: Azure CNI
        "kube-flannel-ds",  # flannel (kubeadm)
        "weave-net",  # Weave (kubeadm)
        "kube-router",
        "antrea-agent",
        "kindnet",  # kind
    }
)
"""DaemonSets (by owner name, any namespace) whose pods are never routed: the pod network and
kube-proxy must come up before any second scheduler can."""
DEFAULT_BOOTSTRAP_LABELS = frozenset(
    {
        ("k8s-app", "aws-node"),
        ("k8s-app", "kube-proxy"),
        ("k8s-app", "calico-node"),
        ("k8s-app", "cilium"),
        ("k8s-app", "netd"),
        ("k8s-app", "azure-cns"),
        ("k8s-app", "kube-router"),
        ("app", "flannel"),
        ("app", "kindnet"),
        ("name", "weave-net"),
    }
)
"""The same components by label, for pods created without an owner (or a renamed DaemonSet)."""

# Every reason a review can end with; bounded, so it can label a metric.
ROUTED = "routed"
ALREADY_ROUTED = "already-routed"
NO_HOST_PORTS = "no-host-ports"
OTHER_SCHEDULER = "other-scheduler"
NODE_NAME_SET = "node-name-set"
EXTENDER_POD = "extender-pod"
EXCLUDED_NAMESPACE = "excluded-namespace"
BOOTSTRAP_POD = "bootstrap-pod"

# The scheduler's liveness verdicts (extender/webhook/lease.py computes them); the non-alive
# ones are also routing reasons.
ALIVE = "alive"
LEASE_MISSING = "scheduler-lease-missing"
LEASE_UNREADABLE = "scheduler-lease-unreadable"
LEASE_STALE = "scheduler-lease-stale"
NOT_ALIVE = (LEASE_MISSING, LEASE_UNREADABLE, LEASE_STALE)

UNROUTED_ANNOTATION = "hostports.dev/unrouted"
"""Set on a pod the webhook would have routed but did not, because the scheduler was not
alive; the value is the reason (`scheduler-lease-stale`, ...)."""


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """Which scheduler to route to and which pods to leave alone whatever they ask for."""

    scheduler_name: str = ROUTED_SCHEDULER
    excluded_namespaces: frozenset[str] = DEFAULT_EXCLUDED_NAMESPACES
    self_label: tuple[str, str] = SELF_LABEL
    bootstrap_daemonsets: frozenset[str] = DEFAULT_BOOTSTRAP_DAEMONSETS
    bootstrap_labels: frozenset[tuple[str, str]] = DEFAULT_BOOTSTRAP_LABELS


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one pod: the JSON patch (empty when left alone) and why."""

    reason: str
    patch: tuple[dict[str, Any], ...] = field(default=())


def uses_host_ports(raw_pod: Mapping[str, Any]) -> bool:
    """True for hostNetwork pods and pods with any hostPort in a container or init container."""
    spec = raw_pod.get("spec")
    if not isinstance(spec, Mapping):
        return False
    if spec.get("hostNetwork") is True:
        return True
    for group in ("containers", "initContainers"):
        containers = spec.get(group)
        if not isinstance(containers, list):
            continue
        for container in containers:
            ports = container.get("ports") if isinstance(container, Mapping) else None
            if not isinstance(ports, list):
                continue
            for port in ports:
                if isinstance(port, Mapping) and _positive(port.get("hostPort")):
                    return True
    return False


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def is_bootstrap_pod(raw_pod: Mapping[str, Any], policy: RoutingPolicy) -> bool:
    """True for a pod of a bootstrap DaemonSet (by owner name) or with a bootstrap label."""
    metadata = raw_pod.get("metadata")
    if not isinstance(metadata, Mapping):
        return False
    owners = metadata.get("ownerReferences")
    if isinstance(owners, list):
        for owner in owners:
            if (
                isinstance(owner, Mapping)
                and owner.get("kind") == "DaemonSet"
                and owner.get("name") in policy.bootstrap_daemonsets
            ):
                return True
    labels = metadata.get("labels")
    if isinstance(labels, Mapping):
        for key, value in policy.bootstrap_labels:
            if labels.get(key) == value:
                return True
    return False


def route_decision(
    raw_pod: Mapping[str, Any], namespace: str, policy: RoutingPolicy, liveness: str = ALIVE
) -> Decision:
    """Decide whether to route one pod; the order of the checks is the order of precedence.

    `liveness` is the hostport-aware scheduler's state (lease.py): a pod that would be routed
    is left to the default scheduler, with the Lease's verdict as the reason, unless ALIVE.
    """
    if namespace in policy.excluded_namespaces:
        return Decision(EXCLUDED_NAMESPACE)
    metadata = raw_pod.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
    key, value = policy.self_label
    if isinstance(labels, Mapping) and labels.get(key) == value:
        return Decision(EXTENDER_POD)
    if is_bootstrap_pod(raw_pod, policy):
        return Decision(BOOTSTRAP_POD)
    spec = raw_pod.get("spec")
    if not isinstance(spec, Mapping):
        return Decision(NO_HOST_PORTS)
    if spec.get("nodeName"):
        return Decision(NODE_NAME_SET)
    current = spec.get("schedulerName") or DEFAULT_SCHEDULER
    if current == policy.scheduler_name:
        return Decision(ALREADY_ROUTED)
    if current != DEFAULT_SCHEDULER:
        return Decision(OTHER_SCHEDULER)
    if not uses_host_ports(raw_pod):
        return Decision(NO_HOST_PORTS)
    if liveness != ALIVE:
        # Fail safe: a scheduler that is down (or that we cannot see) would leave the pod Pending.
        # The pod keeps the default scheduler and a note of why, for `audit` to report.
        reason = liveness if liveness in NOT_ALIVE else LEASE_UNREADABLE
        return Decision(reason, _unrouted_note(metadata, reason))
    # "add" also replaces an existing member (RFC 6902 4.1), so one op covers both cases.
    return Decision(
        ROUTED, ({"op": "add", "path": "/spec/schedulerName", "value": policy.scheduler_name},)
    )


def _unrouted_note(metadata: object, reason: str) -> tuple[dict[str, Any], ...]:
    """The JSON patch that records `reason` in the pod's UNROUTED_ANNOTATION."""
    if not isinstance(metadata, Mapping):
        return ()
    annotations = metadata.get("annotations")
    if isinstance(annotations, Mapping):
        path = "/metadata/annotations/" + UNROUTED_ANNOTATION.replace("~", "~0").replace("/", "~1")
        return ({"op": "add", "path": path, "value": reason},)
    return ({"op": "add", "path": "/metadata/annotations", "value": {UNROUTED_ANNOTATION: reason}},)
