"""The preemption guard: a scheduler may not delete a pod that protects a host port.

Preemption does not go through the Eviction API, so a PodDisruptionBudget does not stop it: the
scheduler deletes each victim with its own identity (`system:kube-scheduler`, or a second
scheduler's ServiceAccount; protocol.md §1.12). A validating webhook on pod DELETE can refuse
exactly those deletions. Everyone else (users, controllers, the kubelet, the garbage collector,
evictions and node drains) is let through: the guard is about scheduling decisions, not about
who may remove a pod.

A pod is protected when it carries `hostports.dev/protected: "true"` or holds a port of the
configured protected ports (the same `protected_ports` the extender's preempt verb honours).
Pure: `guard_decision` is table-tested; the HTTP handler lives in app.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from extender.core.pods import PROTECTED_ANNOTATION, decode_pod
from extender.core.portspec import PortSpec, format_port_specs

KUBE_SCHEDULER_USER = "system:kube-scheduler"
DEFAULT_SCHEDULER_ACCOUNTS = frozenset({("hostport-system", "hostport-extender")})
"""The hostport-aware scheduler's own ServiceAccount (its preempt verb already spares these)."""

# Every reason a DELETE review can end with; bounded, so it can label a metric.
DENIED_PROTECTED = "denied-protected"
DENIED_PROTECTED_PORT = "denied-protected-port"
NOT_A_SCHEDULER = "not-a-scheduler"
NOT_PROTECTED = "not-protected"
NOT_A_POD_DELETE = "not-a-pod-delete"
DENIALS = (DENIED_PROTECTED, DENIED_PROTECTED_PORT)


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """Who counts as a scheduler, and which ports protect the pods holding them."""

    scheduler_accounts: frozenset[tuple[str, str]] = DEFAULT_SCHEDULER_ACCOUNTS
    protected_ports: tuple[PortSpec, ...] = ()

    @property
    def scheduler_users(self) -> frozenset[str]:
        """The usernames a scheduler's DELETE arrives with."""
        accounts = {f"system:serviceaccount:{ns}:{name}" for ns, name in self.scheduler_accounts}
        return frozenset({KUBE_SCHEDULER_USER, *accounts})


@dataclass(frozen=True, slots=True)
class GuardDecision:
    """Allow or deny one DELETE, and the message the requester sees when denied."""

    reason: str
    message: str = ""

    @property
    def allowed(self) -> bool:
        return self.reason not in DENIALS


def guard_decision(raw_pod: Mapping[str, Any], username: str, policy: GuardPolicy) -> GuardDecision:
    """Decide one pod DELETE by `username`; the pod is the review's oldObject."""
    if username not in policy.scheduler_users:
        return GuardDecision(NOT_A_SCHEDULER)
    pod = decode_pod(raw_pod)
    if pod.terminal:
        return GuardDecision(NOT_PROTECTED)
    held = format_port_specs(claim.port_spec for claim in pod.claims)
    name = f"pod {pod.namespace}/{pod.name}"
    tail = (
        f"{username} may not delete it to make room (hostport-extender preemption guard; "
        "users, controllers, the kubelet and evictions may)"
    )
    if pod.protected:
        holds = f"holds host port {held}" if held else "holds no host port"
        return GuardDecision(
            DENIED_PROTECTED,
            f'{name} is protected ({PROTECTED_ANNOTATION}: "true") and {holds}: {tail}',
        )
    hits = [
        claim.port_spec
        for claim in pod.claims
        if any(claim.collides(spec) for spec in policy.protected_ports)
    ]
    if hits:
        return GuardDecision(
            DENIED_PROTECTED_PORT,
            f"{name} holds protected port {format_port_specs(hits)}: {tail}",
        )
    return GuardDecision(NOT_PROTECTED)
