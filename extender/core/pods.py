"""Raw Pod and Node JSON -> small frozen records of the host-level ports they claim.

Pure. This is the one boundary where undecoded API JSON becomes typed data; nothing above it
keeps whole objects. It mirrors the API server's defaulting and the scheduler's port counting
(protocol.md §3): `hostPort > 0` of containers and of restartable init containers (native
sidecars); for hostNetwork pods every declared `containerPort` (hostPort defaults to it); plus
the project's annotations for ports nobody declares. Plain init containers count only for
hostNetwork pods, and only at start (`init_claims`).

Each claim's rejection reason is formatted here, once per pod, naming the holder's workload
(from its controller ownerReference) rather than the pod, so that the scheduler, which groups
reasons by exact string (protocol.md §1.11), prints one line per workload and port, not per node.

Two modes: `strict` for the pod the scheduler asks about (a malformed field is the caller's
error and must be reported), lenient for objects already in the cluster (one bad entry must not
release the ports the rest of the object holds; problems are returned for logging).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from extender.core.ports import Claim, ClaimKind, reason_text
from extender.core.portspec import (
    normalize_ip,
    normalize_protocol,
    parse_port_specs,
    parse_port_specs_lenient,
    split_port_specs,
)
from extender.errors import PortSpecError, WireError, json_type_name

LISTEN_ANNOTATION = "hostports.dev/listen"
RESERVED_ANNOTATION = "hostports.dev/reserved"
OBSERVED_ANNOTATION = "hostports.dev/observed"
OBSERVED_AT_ANNOTATION = "hostports.dev/observed-at"
PROTECTED_ANNOTATION = "hostports.dev/protected"

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})

MAX_LISTEN_ENTRIES = 1024
"""The most entries a `hostports.dev/listen` annotation may have for the pod to be scheduled.

A host runs a handful of undeclared listeners (a node agent has two or three); even a process
binding one port per CPU on a 256-core machine stays far below this. Past it an annotation is a
mistake or an attack: each entry is a claim checked on every filter call, and 100k entries took
seconds per call (issue 14). Ranges count as one entry (`30000-30100`), so a wide block of
ports never needs many. Pods already on nodes keep every entry (see `add_listen_annotation`).
"""


class PodShapeError(WireError):
    """The pod in a request has a field of the wrong shape (a string where a port number goes)."""


class ListenAnnotationError(PodShapeError):
    """The pod being scheduled has an unparseable `hostports.dev/listen`: no node can be judged."""


@dataclass(frozen=True, slots=True)
class PodPorts:
    """What one pod means for host ports.

    `claims` are held while the pod exists on its node; `init_claims` (plain init containers)
    must be free for the pod to start but are not held afterwards.
    """

    uid: str
    namespace: str
    name: str
    node: str
    host_network: bool
    scheduler_name: str
    claims: tuple[Claim, ...]
    init_claims: tuple[Claim, ...] = ()
    protected: bool = False
    terminal: bool = False
    problems: tuple[str, ...] = ()
    workload: str = ""
    """`Kind namespace/name` of the pod's controller (Deployment for a ReplicaSet's pods), or ""
    for a pod without one."""
    resource_version: str = ""
    """metadata.resourceVersion, kept for unbound pods only."""
    not_scheduling: bool = False
    """Unbound, and the scheduler has given up on this attempt (PodScheduled=False) or never
    will place it (it is being deleted)."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def wanted(self) -> tuple[Claim, ...]:
        """Every claim that must be free on a node for the pod to start there."""
        return self.claims + self.init_claims if self.init_claims else self.claims

    @property
    def owner_text(self) -> str:
        """The pod as a rejection names it: "a pod of Deployment ns/web", or "pod ns/web-1"."""
        return f"a pod of {self.workload}" if self.workload else f"pod {self.key}"

    @property
    def family(self) -> str:
        """ "socket" for hostNetwork pods, "dnat" for hostPort pods (see ClaimKind.family)."""
        return "socket" if self.host_network else "dnat"


@dataclass(frozen=True, slots=True)
class NodePorts:
    """What one node means for host ports: its reserved and observed listeners."""

    name: str
    reserved: tuple[Claim, ...]
    observed: tuple[Claim, ...] = ()
    observed_at: float | None = None
    problems: tuple[str, ...] = ()


def reserved_owner(node: str) -> str:
    return f"node:{node}:reserved"


def observed_owner(node: str) -> str:
    return f"node:{node}:observed"


def in_flight_owner(uid: str) -> str:
    return f"in-flight:{uid}"


def may_hold_ports(raw_pod: Mapping[str, Any]) -> bool:
    """False only for a pod that `decode_pod` would find no claim (or problem) in.

    Most pods use no host port; this look at a few fields lets the informer skip building
    records for them (ingest and relists). It errs towards True on anything unusual.
    """
    spec = raw_pod.get("spec")
    metadata = raw_pod.get("metadata")
    if not isinstance(spec, Mapping) or not isinstance(metadata, Mapping):
        return True
    if spec.get("hostNetwork") is not None and spec.get("hostNetwork") is not False:
        return True
    annotations = metadata.get("annotations")
    if annotations and (not isinstance(annotations, Mapping) or LISTEN_ANNOTATION in annotations):
        return True
    for group in ("containers", "initContainers"):
        containers = spec.get(group)
        if containers is None:
            continue
        if not isinstance(containers, list):
            return True
        for container in containers:
            if not isinstance(container, Mapping):
                return True
            ports = container.get("ports")
            if ports is None:
                continue
            if not isinstance(ports, list):
                return True
            for port in ports:
                if not isinstance(port, Mapping) or port.get("hostPort"):
                    return True
    return False


def pod_uid(raw_pod: Mapping[str, Any]) -> str:
    """The key a pod is indexed under: its UID, or namespace/name when it has none."""
    metadata = raw_pod.get("metadata")
    if isinstance(metadata, Mapping):
        uid = metadata.get("uid")
        if isinstance(uid, str) and uid:
            return uid
        namespace = metadata.get("namespace")
        name = metadata.get("name")
        return f"{namespace if isinstance(namespace, str) and namespace else 'default'}/" + (
            name if isinstance(name, str) else ""
        )
    return "default/"


def decode_pod(raw_pod: Mapping[str, Any], *, strict: bool = False) -> PodPorts:
    """Decode a Pod object; `strict` raises PodShapeError instead of noting problems."""
    if not isinstance(raw_pod, Mapping):
        raise PodShapeError(f"Pod must be an object, got {json_type_name(raw_pod)}")
    metadata = _mapping(raw_pod.get("metadata"), "Pod.metadata", strict)
    spec = _mapping(raw_pod.get("spec"), "Pod.spec", strict)
    status = _mapping(raw_pod.get("status"), "Pod.status", strict)
    namespace = _text(metadata.get("namespace"), "Pod.metadata.namespace", strict) or "default"
    name = _text(metadata.get("name"), "Pod.metadata.name", strict)
    uid = _text(metadata.get("uid"), "Pod.metadata.uid", strict) or f"{namespace}/{name}"
    node = _text(spec.get("nodeName"), "Pod.spec.nodeName", strict)
    host_network = spec.get("hostNetwork") is True
    scheduler_name = _text(spec.get("schedulerName"), "Pod.spec.schedulerName", strict)
    phase = _text(status.get("phase"), "Pod.status.phase", strict)
    annotations = _mapping(metadata.get("annotations"), "Pod.metadata.annotations", strict)
    protected = str(annotations.get(PROTECTED_ANNOTATION, "")).strip().lower() == "true"
    workload = workload_of(metadata, namespace)
    record = _PodClaimsBuilder(uid, f"{namespace}/{name}", workload, host_network, strict)

    if phase in TERMINAL_PHASES:
        return PodPorts(
            uid,
            namespace,
            name,
            node,
            host_network,
            scheduler_name,
            (),
            (),
            protected,
            terminal=True,
            workload=workload,
        )

    containers = _sequence(spec.get("containers"), "Pod.spec.containers", strict)
    for index, container in enumerate(containers):
        record.add_container(container, f"Pod.spec.containers[{index}]", transient=False)
    init_containers = _sequence(spec.get("initContainers"), "Pod.spec.initContainers", strict)
    for index, container in enumerate(init_containers):
        where = f"Pod.spec.initContainers[{index}]"
        sidecar = isinstance(container, Mapping) and container.get("restartPolicy") == "Always"
        if sidecar or host_network:
            # The kubelet maps host ports for no plain init container (and upstream NodePorts
            # ignores them): without hostNetwork one neither claims nor is checked. With
            # hostNetwork its sockets are real during init, so the port must be free then.
            record.add_container(container, where, transient=not sidecar)

    listen = annotations.get(LISTEN_ANNOTATION)
    if listen is not None:
        record.add_listen_annotation(listen)

    return PodPorts(
        uid=uid,
        namespace=namespace,
        name=name,
        node=node,
        host_network=host_network,
        scheduler_name=scheduler_name,
        claims=tuple(record.claims),
        init_claims=tuple(record.init_claims),
        protected=protected,
        problems=tuple(record.problems),
        workload=workload,
        # Only an unbound pod's version is ever compared (see Cluster._scheduler_gave_up).
        resource_version="" if node else _text(metadata.get("resourceVersion"), "", strict=False),
        not_scheduling=not node
        and (metadata.get("deletionTimestamp") is not None or _scheduling_failed(status)),
    )


class LastPodDecoder:
    """`decode_pod(raw, strict=True)` that remembers the last pod it decoded.

    The scheduler asks prioritize about the pod it has just filtered, and retries a pod it
    could not place with the same object: comparing the request's pod with the last one (a
    C-level walk that stops at the first difference, the name for another pod) costs ~1 us
    where decoding a pod again costs 6-9 us alone and 20-26 us while serving. Python's `==`
    takes 80.0 for 80 and 1 for true, which the decoder does not, so a pod found equal is
    confirmed on its JSON encoding (~2 us each) before the record is reused: the answer is
    exactly what decoding it would give. A pod whose decoding raises is not remembered.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[Mapping[str, Any], PodPorts] | None = None
        """The last raw pod decoded and its record."""

    def decode(self, raw_pod: Mapping[str, Any]) -> PodPorts:
        last = self._last
        if last is not None:
            last_raw, last_pod = last
            if raw_pod == last_raw and orjson.dumps(raw_pod) == orjson.dumps(last_raw):
                return last_pod
        pod = decode_pod(raw_pod, strict=True)
        self._last = raw_pod, pod
        return pod


def workload_of(metadata: Mapping[str, Any], namespace: str) -> str:
    """`Kind namespace/name` of the pod's controller, or "" when it has none.

    A ReplicaSet's pods are named after its Deployment when the ReplicaSet's name is
    `<deployment>-<pod-template-hash>` (how the Deployment controller names them). Malformed
    references are ignored: the workload only names the holder, it never changes a claim.
    """
    references = metadata.get("ownerReferences")
    if not isinstance(references, list):
        return ""
    for reference in references:
        if not isinstance(reference, Mapping) or reference.get("controller") is not True:
            continue
        kind, name = reference.get("kind"), reference.get("name")
        if not isinstance(kind, str) or not isinstance(name, str) or not kind or not name:
            return ""
        if kind == "ReplicaSet":
            labels = metadata.get("labels")
            template_hash = labels.get("pod-template-hash") if isinstance(labels, Mapping) else None
            if (
                isinstance(template_hash, str)
                and template_hash
                and name.endswith(f"-{template_hash}")
            ):
                kind, name = "Deployment", name[: -len(template_hash) - 1]
        # Interned: the pods of one workload share the text, as their reasons do.
        return sys.intern(f"{kind} {namespace}/{name}")
    return ""


def _scheduling_failed(status: Mapping[str, Any]) -> bool:
    conditions = status.get("conditions")
    if not isinstance(conditions, list):
        return False
    return any(
        isinstance(condition, Mapping)
        and condition.get("type") == "PodScheduled"
        and condition.get("status") == "False"
        for condition in conditions
    )


class _PodClaimsBuilder:
    def __init__(self, uid: str, key: str, workload: str, host_network: bool, strict: bool) -> None:
        self.uid = uid
        self.key = key
        self.host_network = host_network
        self.strict = strict
        self.claims: list[Claim] = []
        self.init_claims: list[Claim] = []
        self.problems: list[str] = []
        kind = "hostNetwork" if host_network else "hostPort"
        # `holder` names the pod (who, audit, /debug); the reason names its workload, so that
        # every node where the same workload holds the same port gives the same string.
        self.holder = f"{kind} pod {key}"
        self.held_by = f"held by {kind} {f'pods of {workload}' if workload else f'pod {key}'}"

    def add_container(self, container: object, where: str, *, transient: bool) -> None:
        if not isinstance(container, Mapping):
            self._problem(f"{where} must be an object, got {json_type_name(container)}")
            return
        for index, port in enumerate(
            _sequence(container.get("ports"), f"{where}.ports", self.strict)
        ):
            claim = self._port_claim(port, f"{where}.ports[{index}]")
            if claim is not None:
                (self.init_claims if transient else self.claims).append(claim)

    def _port_claim(self, port: object, where: str) -> Claim | None:
        if not isinstance(port, Mapping):
            self._problem(f"{where} must be an object, got {json_type_name(port)}")
            return None
        host_port = port.get("hostPort")
        container_port = port.get("containerPort")
        for label, value in (("hostPort", host_port), ("containerPort", container_port)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                self._problem(f"{where}.{label} must be an integer, got {value!r}")
                return None
        if self.host_network and not host_port:
            host_port = container_port  # the API's defaulting for hostNetwork pods
        if not host_port or host_port <= 0:
            return None
        if host_port > 65535:
            self._problem(f"{where}.hostPort {host_port} is outside 1-65535")
            return None
        try:
            protocol = normalize_protocol(
                _text(port.get("protocol"), f"{where}.protocol", self.strict)
            )
            ip = normalize_ip(_text(port.get("hostIP"), f"{where}.hostIP", self.strict))
        except ValueError as error:
            self._problem(f"{where}: {error}")
            return None
        kind = ClaimKind.HOST_NETWORK if self.host_network else ClaimKind.HOST_PORT
        reason = reason_text(protocol, host_port, host_port, ip, self.held_by)
        return Claim(protocol, host_port, host_port, ip, kind, self.uid, self.holder, reason)

    def add_listen_annotation(self, value: object) -> None:
        if not isinstance(value, str):
            self._problem(f"annotation {LISTEN_ANNOTATION} must be a string")
            return
        if not self.host_network:
            # Without hostNetwork the process listens in the pod's own namespace: no host port.
            self.problems.append(
                f"annotation {LISTEN_ANNOTATION} ignored: pod {self.key} does not use hostNetwork"
            )
            return
        entries = split_port_specs(value)
        if len(entries) > MAX_LISTEN_ENTRIES:
            too_many = (
                f"annotation {LISTEN_ANNOTATION} on pod {self.key} has {len(entries)} entries, "
                f"more than the limit of {MAX_LISTEN_ENTRIES}"
            )
            if self.strict:
                # Counted before parsing: refusing 100k entries costs one split, not 100k parses.
                raise ListenAnnotationError(f"{too_many}; merge ports into ranges (30000-30100)")
            # A pod already on a node really listens there: keep every claim, say so once.
            self.problems.append(f"{too_many}; all kept for the pod already placed")
        if self.strict:
            try:
                specs = parse_port_specs(value, entries)
            except PortSpecError as error:
                raise ListenAnnotationError(
                    f"invalid annotation {LISTEN_ANNOTATION} on pod {self.key}: {error}"
                ) from error
        else:
            specs, problems = parse_port_specs_lenient(value, entries)
            self.problems.extend(f"annotation {LISTEN_ANNOTATION}: {p}" for p in problems)
        specs = tuple(dict.fromkeys(specs))  # a repeated entry claims nothing more
        holder = f"hostNetwork pod {self.key} (undeclared listener, {LISTEN_ANNOTATION})"
        held_by = f"{self.held_by} (undeclared listener, {LISTEN_ANNOTATION})"
        uid, kind = self.uid, ClaimKind.LISTEN
        self.claims.extend(
            Claim(
                s.protocol,
                s.first,
                s.last,
                s.ip,
                kind,
                uid,
                holder,
                reason_text(s.protocol, s.first, s.last, s.ip, held_by),
            )
            for s in specs
        )

    def _problem(self, message: str) -> None:
        if self.strict:
            raise PodShapeError(message)
        self.problems.append(message)


def decode_node(raw_node: Mapping[str, Any]) -> NodePorts:
    """Decode a Node object's reserved and observed port annotations (leniently)."""
    metadata = raw_node.get("metadata") if isinstance(raw_node, Mapping) else None
    if not isinstance(metadata, Mapping) or not isinstance(metadata.get("name"), str):
        raise WireError("Node without metadata.name")
    name: str = metadata["name"]
    annotations = metadata.get("annotations")
    if not isinstance(annotations, Mapping):
        return NodePorts(name, ())
    problems: list[str] = []
    reserved = _node_claims(
        name,
        annotations=annotations,
        key=RESERVED_ANNOTATION,
        kind=ClaimKind.NODE_RESERVED,
        owner=reserved_owner(name),
        holder=f"a host daemon on the node ({RESERVED_ANNOTATION})",
        problems=problems,
    )
    observed = _node_claims(
        name,
        annotations=annotations,
        key=OBSERVED_ANNOTATION,
        kind=ClaimKind.OBSERVED,
        owner=observed_owner(name),
        holder=f"a process observed listening on the host ({OBSERVED_ANNOTATION})",
        problems=problems,
    )
    observed_at = None
    stamp = annotations.get(OBSERVED_AT_ANNOTATION)
    if isinstance(stamp, str) and stamp:
        try:
            observed_at = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            problems.append(f"annotation {OBSERVED_AT_ANNOTATION}: {stamp!r} is not RFC 3339")
    return NodePorts(name, reserved, observed, observed_at, tuple(problems))


def _node_claims(
    node: str,
    *,
    annotations: Mapping[str, Any],
    key: str,
    kind: ClaimKind,
    owner: str,
    holder: str,
    problems: list[str],
) -> tuple[Claim, ...]:
    value = annotations.get(key)
    if not isinstance(value, str):
        return ()
    specs, bad = parse_port_specs_lenient(value)
    problems.extend(f"node {node} annotation {key}: {problem}" for problem in bad)
    return tuple(Claim(s.protocol, s.first, s.last, s.ip, kind, owner, holder) for s in specs)


def cluster_reserved_claims(text: str) -> tuple[Claim, ...]:
    """Claims for the settings' cluster-wide reserved ports (strict: a typo is a startup error)."""
    return tuple(
        Claim(
            s.protocol,
            s.first,
            s.last,
            s.ip,
            ClaimKind.CLUSTER_RESERVED,
            "cluster:reserved",
            "a host daemon on every node (cluster-wide reserved ports)",
        )
        for s in parse_port_specs(text)
    )


def _mapping(value: object, where: str, strict: bool) -> Mapping[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return value
    if strict:
        raise PodShapeError(f"{where} must be an object, got {json_type_name(value)}")
    return {}


def _sequence(value: object, where: str, strict: bool) -> Sequence[Any]:
    if value is None:
        return ()
    if isinstance(value, list):
        return value
    if strict:
        raise PodShapeError(f"{where} must be a list, got {json_type_name(value)}")
    return ()


def _text(value: object, where: str, strict: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if strict:
        raise PodShapeError(f"{where} must be a string, got {json_type_name(value)}")
    return ""
