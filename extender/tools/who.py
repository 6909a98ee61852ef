"""`who`: every claim on one node, or on one port of it, with who holds it and whether it counts.

Pure. Reads the index for what blocks ports now, and the cluster's per-node state for what the
index leaves out on purpose (stale or pod-explained observed listeners, tentative in-flight
pods), so an operator sees everything that could explain "address already in use".
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from extender.core.cluster import Cluster
from extender.core.ports import ClaimKind
from extender.core.portspec import normalize_protocol
from extender.errors import ExtenderError, PortSpecError
from extender.tools.views import (
    EXPLAINED,
    STALE,
    TENTATIVE,
    ClaimView,
    port_text,
    sort_key,
    view_of,
)


class UnknownNodeError(ExtenderError):
    """A node name the cluster does not know; the message suggests close names."""


@dataclass(frozen=True, slots=True)
class PortQuery:
    """`PORT[-END][/PROTO]`: without a protocol, every protocol matches."""

    first: int
    last: int
    protocol: str | None = None

    def __str__(self) -> str:
        ports = port_text(self.first, self.last)
        return f"{ports}/{self.protocol}" if self.protocol else ports

    def matches(self, view: ClaimView) -> bool:
        return (
            (self.protocol is None or view.protocol == self.protocol)
            and view.first <= self.last
            and self.first <= view.last
        )


def parse_port_query(text: str) -> PortQuery:
    """Parse `80`, `80/UDP` or `30000-30100/TCP`; PortSpecError quotes bad text."""
    ports, slash, protocol_text = text.strip().partition("/")
    first_text, dash, last_text = ports.partition("-")
    try:
        if slash and not protocol_text.strip():
            raise ValueError("'/' must be followed by TCP, UDP or SCTP")
        protocol = normalize_protocol(protocol_text) if slash else None
        first, last = _port(first_text), _port(last_text) if dash else _port(first_text)
    except ValueError as error:
        raise PortSpecError(f"port {text!r}: {error}") from error
    if last < first:
        raise PortSpecError(f"port {text!r}: range end {last} is below its start {first}")
    return PortQuery(first, last, protocol)


def _port(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{text.strip()!r} is not a port number (1-65535)")
    return int(text)


@dataclass(frozen=True, slots=True)
class WhoReport:
    node: str
    query: PortQuery | None
    claims: tuple[ClaimView, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "port": None if self.query is None else str(self.query),
            "claims": [claim.as_json() for claim in self.claims],
        }


def known_nodes(cluster: Cluster) -> set[str]:
    """Nodes the cluster has seen, as Node objects or as the node of a pod holding ports."""
    return set(cluster.nodes_known) | set(cluster.index.node_names())


def who(cluster: Cluster, node: str, query: PortQuery | None = None) -> WhoReport:
    """Every claim on `node` (those overlapping `query` if given); UnknownNodeError otherwise."""
    known = known_nodes(cluster)
    if node not in known:
        raise UnknownNodeError(_unknown_node_message(node, known))
    held = cluster.index.claims_on(node)
    views = [view_of(cluster, claim) for claim in held]
    state = cluster.nodes_known.get(node)
    if state is not None:
        active_observed = {claim for claim in held if claim.kind is ClaimKind.OBSERVED}
        for claim in state.observed:
            if claim not in active_observed:
                views.append(view_of(cluster, claim, STALE if state.stale else EXPLAINED))
    for tentative in cluster.in_flight.all():
        if node not in tentative.nodes:
            continue
        holder = f"pod {tentative.pod.key}, which is being scheduled (passed this node)"
        views.extend(
            ClaimView(
                claim.protocol,
                claim.first,
                claim.last,
                claim.ip,
                ClaimKind.IN_FLIGHT,
                TENTATIVE,
                holder,
                tentative.pod.key,
            )
            for claim in tentative.pod.wanted
        )
    if query is not None:
        views = [view for view in views if query.matches(view)]
    return WhoReport(node, query, tuple(sorted(views, key=sort_key)))


def _unknown_node_message(node: str, known: set[str]) -> str:
    close = difflib.get_close_matches(node, sorted(known), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f" ({len(known)} nodes known)"
    return f"node {node!r} unknown{hint}"
