"""The cluster as the extender knows it: the port index plus everything that keeps it honest.

Owns the PortIndex and the in-flight reservations, and is fed by ObjectSinks (informers in live
mode, the snapshot loader otherwise) and by bindings. Single-threaded by design: everything runs
on the event loop, so no locks. Logs each malformed annotation once, not once per event.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import time
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass

import orjson

from extender.core.inflight import InFlight
from extender.core.podline import (
    list_item_uid,
    may_claim_ports,
    pod_event_head,
    raw_port_shape,
)
from extender.core.pods import (
    LISTEN_ANNOTATION,
    PROTECTED_ANNOTATION,
    TERMINAL_PHASES,
    NodePorts,
    PodPorts,
    cluster_reserved_claims,
    decode_node,
    decode_pod,
    in_flight_owner,
    may_hold_ports,
    observed_owner,
    pod_uid,
    reserved_owner,
)
from extender.core.ports import Claim, ClaimKind, PortIndex, reason_text
from extender.core.portspec import parse_port_specs
from extender.core.sinks import RawObject, consumed, emptied
from extender.settings import Settings

ListedPod = tuple[PodPorts, int | None]
"""What a relist keeps of a listed pod until it is applied: its record and raw port shape."""

log = logging.getLogger(__name__)

_MAX_REMEMBERED_PROBLEMS = 10_000
_POD_KINDS = frozenset({ClaimKind.HOST_PORT, ClaimKind.HOST_NETWORK, ClaimKind.LISTEN})
UDP_PRUNE_INTERVAL_SECONDS = 60.0
"""UDP owner history only needs trimming now and then; its window is ten minutes."""


@dataclass(slots=True)
class _BoundReservation:
    node: str
    expires: float


@dataclass(slots=True)
class _NodeState:
    """What the cluster keeps per known node beyond its claims in the index."""

    observed: tuple[Claim, ...] = ()
    observed_at: float | None = None
    stale: bool = False


@dataclass(slots=True)
class ClusterStats:
    """Counters about what the cluster sent us."""

    problems_seen: int = 0
    """Distinct malformed annotations or fields logged (each is logged once)."""


class Cluster:
    """Port claims of every pod and node, in-flight reservations, and the sinks that feed them."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.index = PortIndex(
            cluster_reserved_claims(settings.cluster_reserved_ports),
            clock=clock,
            udp_switch_window=settings.udp_switch_window_seconds,
        )
        self.in_flight = InFlight()
        self.protected_ports = parse_port_specs(settings.protected_ports)
        self.clock = clock
        self.wall_clock = wall_clock
        self.nodes_known: dict[str, _NodeState] = {}
        self.pods_by_uid: dict[str, PodPorts] = {}
        """Pods that hold or want host-level ports (others are not kept)."""
        self.protected_uids: set[str] = set()
        self._bound: dict[str, _BoundReservation] = {}
        self._stale_deadlines: list[tuple[float, str, float]] = []
        """(wall time an observation goes stale, node, its observed-at), a min-heap."""
        self._udp_pruned_at = clock()
        self._problems_reported: set[str] = set()
        self.stats = ClusterStats()
        self.pods = _PodSink(self)
        self.nodes = _NodeSink(self)
        self.on_change: Callable[[], None] = lambda: None
        """Called after anything that may settle an in-flight pod (set by the HTTP app)."""

    # --- pods ------------------------------------------------------------------------------

    def apply_pod(self, pod: PodPorts) -> None:
        """Make the index reflect `pod` as it is now."""
        self._report(pod.problems)
        uid = pod.uid
        previous = self.pods_by_uid.get(uid)
        holds_ports = bool(pod.claims or pod.init_claims)
        if holds_ports:
            self.pods_by_uid[uid] = pod
        else:
            self.pods_by_uid.pop(uid, None)
        if pod.protected and holds_ports:
            # Only pods holding ports can be evicted "for a port".
            self.protected_uids.add(uid)
        else:
            self.protected_uids.discard(uid)
        self.index.set_owner(uid, pod.node, pod.claims)
        if pod.node:
            # The informer (or a snapshot binding) shows where the pod went, on the node we
            # reserved or another one: reservations settle.
            settled = self._release_reservations(uid)
        else:
            settled = pod.not_scheduling and self._scheduler_gave_up(pod)
        if settled:
            self.on_change()
        for node in {pod.node, previous.node if previous else ""} - {""}:
            self._refresh_observed(node)

    def remove_pod(self, uid: str) -> None:
        previous = self.pods_by_uid.pop(uid, None)
        self.protected_uids.discard(uid)
        self.index.remove_owner(uid)
        settled = self._release_reservations(uid)
        if previous is not None and previous.node:
            self._refresh_observed(previous.node)
        if settled:
            self.on_change()

    def holds_pod(self, uid: str) -> bool:
        """Whether anything of `uid` is kept: its ports, or a reservation made for it."""
        return uid in self.pods_by_uid or self.has_reservation(uid)

    def has_reservation(self, uid: str) -> bool:
        """Whether `uid` has a tentative (in-flight) or a bound reservation."""
        return uid in self._bound or self.in_flight.get(uid) is not None

    def replace_pods(self, pods: Iterable[PodPorts]) -> None:
        """A full relist: pods missing from it are gone and release their ports."""
        fresh = {pod.uid: pod for pod in pods}
        self.release_pods_except(fresh)
        for pod in fresh.values():
            self.apply_pod(pod)

    def release_pods_except(self, kept: Container[str]) -> None:
        """Remove every held pod whose UID is not in `kept` (the end of a relist)."""
        for _ in self.release_pods_in_steps(kept):
            pass

    def release_pods_in_steps(self, kept: Container[str]) -> Iterator[None]:
        """`release_pods_except`, one pod per step (a relist after a long outage can find
        thousands gone)."""
        for uid in list(self.pods_by_uid):  # a step per held pod, kept or not
            if uid not in kept:
                self.remove_pod(uid)
            yield

    # --- bindings and reservations -----------------------------------------------------------

    def apply_binding(self, uid: str, node: str) -> None:
        """Snapshot mode: the binding happened in the in-memory cluster; the pod holds its ports."""
        tentative = self.in_flight.take(uid)
        pod = tentative.pod if tentative is not None else self.pods_by_uid.get(uid)
        if pod is not None:
            self.apply_pod(dataclasses.replace(pod, node=node))

    def record_binding(self, uid: str, node: str) -> None:
        """The scheduler bound `uid` to `node` through us and the binder succeeded.

        Unless the index already shows the pod there (snapshot mode, or a fast watch), an
        in-flight reservation holds its ports until the watch shows it, or until it expires.
        """
        tentative = self.in_flight.take(uid)
        pod = tentative.pod if tentative is not None else self.pods_by_uid.get(uid)
        held = self.index.claims_of(uid)
        if pod is not None and pod.claims and (held is None or held[0] != node):
            holder = f"pod {pod.key}, which is being bound to this node"
            by = f"held by {pod.owner_text}, which is being bound to this node (in flight)"
            claims = [
                Claim(
                    c.protocol,
                    c.first,
                    c.last,
                    c.ip,
                    ClaimKind.IN_FLIGHT,
                    in_flight_owner(uid),
                    holder,
                    reason_text(c.protocol, c.first, c.last, c.ip, by),
                )
                for c in pod.claims
            ]
            self.index.set_owner(in_flight_owner(uid), node, claims)
            expires = self.clock() + self.settings.bound_reservation_ttl_seconds
            self._bound[uid] = _BoundReservation(node, expires)
        self.on_change()

    def forget_in_flight(self, uid: str) -> None:
        """A binding failed: the pod holds nothing until the scheduler tries again."""
        self._release_reservations(uid)
        self.on_change()

    def _release_reservations(self, uid: str) -> bool:
        """Drop the tentative and the bound reservation of `uid`; whether there was any."""
        released = self.in_flight.take(uid) is not None
        if self._bound.pop(uid, None) is not None:
            self.index.remove_owner(in_flight_owner(uid))
            released = True
        return released

    def _scheduler_gave_up(self, pod: PodPorts) -> bool:
        """Drop `pod`'s tentative reservation if the watch shows the scheduler gave up on it
        after our filter passed it (a later extender, plugin or volume binding failed).

        Only a version newer than the one the scheduler filtered counts: the pod may still
        carry the PodScheduled=False of its previous attempt, and our watch may lag behind the
        scheduler's. resourceVersions are compared as the integers the API server issues; one
        that is not an integer never releases (the reservation then ends with its TTL).
        """
        tentative = self.in_flight.get(pod.uid)
        if tentative is None:
            return False
        seen, filtered = pod.resource_version, tentative.pod.resource_version
        if not (seen.isdigit() and filtered.isdigit() and int(seen) > int(filtered)):
            return False
        self.in_flight.take(pod.uid)
        return True

    def bound_reservations(self) -> int:
        return len(self._bound)

    def settle(self) -> None:
        """After a bulk load: lay out the hot lookup tables compactly (see PortIndex.compact)."""
        self.index.compact()

    def sweep(self) -> None:
        """Periodic upkeep: expire reservations and stale observations, trim UDP history."""
        now = self.clock()
        changed = bool(self.in_flight.expire(now))
        for uid in [uid for uid, bound in self._bound.items() if bound.expires <= now]:
            del self._bound[uid]
            self.index.remove_owner(in_flight_owner(uid))
            changed = True
        self._expire_observations()
        if now - self._udp_pruned_at >= UDP_PRUNE_INTERVAL_SECONDS:
            self.index.forget_udp_history()
            self._udp_pruned_at = now
        if changed:
            self.on_change()

    def _expire_observations(self) -> None:
        """Re-evaluate only the nodes whose observations have just passed the staleness bound.

        Runs every second on the event loop: a scan of every node there cost ~30 ms at 5,000
        nodes running the agent. Deadlines sit in a heap; an entry superseded by a newer
        observation of its node is skipped when it comes up.
        """
        now = self.wall_clock()
        while self._stale_deadlines and self._stale_deadlines[0][0] <= now:
            _, name, observed_at = heapq.heappop(self._stale_deadlines)
            state = self.nodes_known.get(name)
            if state is not None and state.observed_at == observed_at:
                self._refresh_observed(name)

    # --- nodes -------------------------------------------------------------------------------

    def apply_node(self, node: NodePorts) -> None:
        self._report(node.problems)
        state = self.nodes_known.setdefault(node.name, _NodeState())
        self.index.set_owner(reserved_owner(node.name), node.name, node.reserved)
        fresh_observation = node.observed_at != state.observed_at
        state.observed = node.observed
        state.observed_at = node.observed_at
        if fresh_observation and node.observed and node.observed_at is not None:
            deadline = node.observed_at + self.settings.observed_stale_seconds
            heapq.heappush(self._stale_deadlines, (deadline, node.name, node.observed_at))
        self._refresh_observed(node.name)

    def remove_node(self, name: str) -> None:
        self.nodes_known.pop(name, None)
        self.index.remove_owner(reserved_owner(name))
        self.index.remove_owner(observed_owner(name))

    def replace_nodes(self, nodes: Iterable[NodePorts]) -> None:
        fresh = {node.name: node for node in nodes}
        self.release_nodes_except(fresh)
        for node in fresh.values():
            self.apply_node(node)

    def release_nodes_except(self, kept: Container[str]) -> None:
        """Forget every known node whose name is not in `kept` (the end of a relist)."""
        for _ in self.release_nodes_in_steps(kept):
            pass

    def release_nodes_in_steps(self, kept: Container[str]) -> Iterator[None]:
        """`release_nodes_except`, one node per step."""
        for name in list(self.nodes_known):  # a step per known node, kept or not
            if name not in kept:
                self.remove_node(name)
            yield

    def observation_is_stale(self, node: str) -> bool:
        state = self.nodes_known.get(node)
        return state is not None and state.stale

    def _refresh_observed(self, name: str) -> None:
        """Observed listeners count unless stale or explained by a pod on the same node."""
        state = self.nodes_known.get(name)
        if state is None or not state.observed:
            if state is not None and state.stale:
                state.stale = False
            return
        age = None if state.observed_at is None else self.wall_clock() - state.observed_at
        state.stale = age is None or age > self.settings.observed_stale_seconds
        if state.stale:
            self.index.remove_owner(observed_owner(name))
            return
        # Looked up through the port tables: a pod with thousands of claims on this node must
        # not make every event here cost observed x claims.
        unexplained = [
            seen for seen in state.observed if not self.index.collides_on(name, seen, _POD_KINDS)
        ]
        self.index.set_owner(observed_owner(name), name, unexplained)

    # --- upkeep ------------------------------------------------------------------------------

    def _report(self, problems: Iterable[str]) -> None:
        for problem in problems:
            if problem in self._problems_reported:
                continue
            if len(self._problems_reported) >= _MAX_REMEMBERED_PROBLEMS:
                self._problems_reported.clear()
            self._problems_reported.add(problem)
            self.stats.problems_seen += 1
            log.warning("%s", problem)


class _PodSink:
    """ObjectSink for Pods."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._shapes: dict[str, tuple[int, PodPorts]] = {}
        """uid -> (port shape of the raw pod, the record decoded from it), for held pods."""
        self._line_shapes: dict[str, tuple[int, PodPorts | None]] = {}
        """uid -> (raw_port_shape of its last applied watch line or list item, the record held
        after it, None if it held nothing: a hostNetwork pod without ports is still decoded
        once, not on every status update)."""
        self._listed_shapes: dict[str, int] = {}
        """uid -> raw_port_shape of its item in the list being fetched (see `listable`)."""
        self._line_seen: tuple[str, int] | None = None
        """(uid, raw shape) of the watch line `skippable` just let through: the informer
        decodes and upserts exactly that line next."""

    def upsert(self, raw: RawObject) -> None:
        if not self._matters(raw):
            self._remember_line(pod_uid(raw))  # holds nothing: skip its next identical line
            return
        # Most events of a pod holding ports are status updates: when everything the decoder
        # reads is as it was for the record we hold, decoding again would give that record.
        uid = pod_uid(raw)
        shape = _port_shape(raw)
        cluster = self._cluster
        if self._record_for(uid, shape) is not None and not cluster.has_reservation(uid):
            self._remember_line(uid)
            return
        pod = decode_pod(raw)
        cluster.apply_pod(pod)
        self._remember(pod, shape)
        self._remember_line(uid)

    def _record_for(self, uid: str, shape: int | None) -> PodPorts | None:
        """The record held for `uid` if it was decoded from this same raw shape: what decoding
        the pod again would give (None: decode it)."""
        known = self._shapes.get(uid)
        if (
            known is not None
            and known[0] == shape
            and self._cluster.pods_by_uid.get(uid) is known[1]
        ):
            return known[1]
        return None

    def _remember_line(self, uid: str) -> None:
        """Note the raw shape of the watch line just applied, against the record now held."""
        seen, self._line_seen = self._line_seen, None
        if seen is not None and seen[0] == uid:
            self._line_shapes[uid] = (seen[1], self._cluster.pods_by_uid.get(uid))
        else:
            self._line_shapes.pop(uid, None)

    def delete(self, raw: RawObject) -> None:
        uid = pod_uid(raw)
        self._shapes.pop(uid, None)
        self._line_shapes.pop(uid, None)
        self._line_seen = None
        self._cluster.remove_pod(uid)

    def replace(self, raws: list[RawObject]) -> None:
        # Pods that never held ports are not in the index, so leaving them out of the relist
        # still releases exactly the pods that vanished.
        self._shapes.clear()
        self._line_shapes.clear()
        self._listed_shapes.clear()
        self._cluster.replace_pods(decode_pod(raw) for raw in raws if self._matters(raw))

    def compact(self, raw: RawObject) -> ListedPod | None:
        """A listed pod as its record and raw shape; None if it cannot change the index.

        `_matters` reads the pods held before this list, which nothing changes while the list
        is fetched: this sink is the only writer of pods, and it applies the list only once
        the list is complete. A pod held from before whose raw shape is unchanged keeps its
        record: a relist then neither decodes it again nor holds two records of it.
        """
        if not self._matters(raw):
            return None
        shape = _port_shape(raw)
        held = self._record_for(pod_uid(raw), shape)
        return (held if held is not None else decode_pod(raw)), shape

    def replace_in_steps(self, listed: list[ListedPod]) -> Iterator[None]:
        """`replace`, one pod per step (see SteppedSink): a relist of 150,000 pods is ~1 s.

        What was noted before the list is set aside at once and freed in steps (`emptied`),
        like the list's own bookkeeping once the list is applied.
        """
        shapes, self._shapes = self._shapes, {}
        line_shapes, self._line_shapes = self._line_shapes, {}
        listed_shapes, self._listed_shapes = self._listed_shapes, {}
        yield from emptied(shapes)
        yield from emptied(line_shapes)
        fresh: set[str] = set()
        for pod, shape in consumed(listed):
            fresh.add(pod.uid)
            self._cluster.apply_pod(pod)
            self._remember(pod, shape)
            self._remember_listed(pod.uid, listed_shapes.pop(pod.uid, None))
            yield
        yield from emptied(listed_shapes)
        yield from self._cluster.release_pods_in_steps(fresh)
        yield from emptied(fresh)

    def _remember_listed(self, uid: str, shape: int | None) -> None:
        """A listed pod's raw shape, against the record now held: its next status update can
        be skipped from the raw line as if that line followed a watch line (see skippable)."""
        if shape is not None:
            self._line_shapes[uid] = (shape, self._cluster.pods_by_uid.get(uid))

    def _remember(self, pod: PodPorts, shape: int | None) -> None:
        """Note the shape `pod` was decoded from, while the cluster holds exactly that record."""
        if shape is not None and self._cluster.pods_by_uid.get(pod.uid) is pod:
            self._shapes[pod.uid] = (shape, pod)
        else:
            self._shapes.pop(pod.uid, None)

    def skippable(self, line: bytes) -> str | None:
        """The resourceVersion of a raw watch line that cannot change the cluster, else None.

        A pod that claims no host port and that we hold nothing for changes nothing whatever
        the event (see extender/core/podline.py): the informer only moves its resourceVersion,
        without decoding the line. So does a status update of a pod we hold when the raw bytes
        of everything the decoder reads are as they were in its last applied line, and the
        record we hold is still the one that line gave (podline.raw_port_shape). Any other line
        is decoded and applied as usual.
        """
        self._line_seen = None
        head = pod_event_head(line)
        if head is None:
            return None
        kind, uid, resource_version = head  # (unpacked once: every pod line comes here)
        cluster = self._cluster
        if not may_claim_ports(line):
            if cluster.holds_pod(uid):
                return None
            self._line_shapes.pop(uid, None)  # it named ports once: nothing to keep now
            return resource_version
        if kind != "MODIFIED":
            return None
        shape = raw_port_shape(line)
        if shape is None:
            return None
        known = self._line_shapes.get(uid)
        if (
            known is not None
            and known[0] == shape
            and cluster.pods_by_uid.get(uid) is known[1]
            and not cluster.has_reservation(uid)
        ):
            return resource_version
        self._line_seen = (uid, shape)
        return None

    def listable(self, raw: bytes) -> bool:
        """Whether a raw item of a (re)list is worth decoding: False if it cannot claim a port.

        For one that is, its raw shape is noted, so that its first status update after the list
        can be skipped like the later ones (podline.raw_port_shape: the same for the item and for
        a watch line of the same object state).

        Such a pod never enters the index, and if the index holds it from before, leaving it out
        of the list releases it at the end of the relist, as applying it would: the same state,
        without decoding the ~90% of a cluster's pods that claim no host port (see
        extender/core/podline.py for why the words decide it).
        """
        if not may_claim_ports(raw):
            return False
        uid = list_item_uid(raw)
        shape = raw_port_shape(raw) if uid is not None else None
        if uid is not None and shape is not None:
            self._listed_shapes[uid] = shape
        return True

    def _matters(self, raw: RawObject) -> bool:
        """Whether `raw` can change the index: it may hold ports, or it did until now."""
        return may_hold_ports(raw) or pod_uid(raw) in self._cluster.pods_by_uid


def _phase_kind(phase: object) -> object:
    """What of a pod's phase decode_pod reads: terminal or not; a value that is not a string
    (which the decoder notes as a problem) as itself, in a list so it equals neither."""
    if isinstance(phase, str):
        return "terminal" if phase in TERMINAL_PHASES else "live"
    return [phase]


def _port_shape(raw: RawObject) -> int | None:
    """A digest of every field `decode_pod` reads beyond the UID (None: not digestible).

    The whole spec (containers, init containers, hostNetwork, nodeName, schedulerName), the
    two annotations it reads, and whether the phase is terminal (a phase that is not a string
    as itself: the decoder notes it); a status update changes none of them.
    """
    metadata = raw.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    status = raw.get("status")
    try:
        return hash(
            orjson.dumps(
                [
                    raw.get("spec"),
                    annotations.get(LISTEN_ANNOTATION)
                    if isinstance(annotations, dict)
                    else annotations,
                    annotations.get(PROTECTED_ANNOTATION)
                    if isinstance(annotations, dict)
                    else None,
                    _phase_kind(status.get("phase")) if isinstance(status, dict) else status,
                ]
            )
        )
    except TypeError:
        return None  # not JSON (a snapshot's YAML can hold other types): always decode


class _NodeSink:
    """ObjectSink for Nodes."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    def upsert(self, raw: RawObject) -> None:
        self._cluster.apply_node(decode_node(raw))

    def delete(self, raw: RawObject) -> None:
        self._cluster.remove_node(decode_node(raw).name)

    def replace(self, raws: list[RawObject]) -> None:
        self._cluster.replace_nodes(decode_node(raw) for raw in raws)

    def compact(self, raw: RawObject) -> NodePorts:
        return decode_node(raw)

    def replace_in_steps(self, listed: list[NodePorts]) -> Iterator[None]:
        """`replace`, one node per step (see SteppedSink)."""
        fresh: set[str] = set()
        for node in consumed(listed):
            fresh.add(node.name)
            self._cluster.apply_node(node)
            yield
        yield from self._cluster.release_nodes_in_steps(fresh)
        yield from emptied(fresh)
