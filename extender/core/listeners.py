"""Undeclared hostNetwork listeners (`hostports.dev/listen`) -> container ports to declare.

Pure. The extender knows a hostNetwork pod's undeclared sockets from its annotation; the default
scheduler's NodePorts filter, Karpenter and cluster-autoscaler only know declared container
ports. Declaring the annotated listeners at creation (the webhook's /materialise) makes every one
of them see the port. The plan respects what the API server and its clients enforce:

- hostNetwork: `hostPort == containerPort`;
- per pod, (hostIP, protocol, hostPort) is unique (validation's host-port conflict check), so an
  entry already declared, or covered by a declared wildcard of the same port, is not added;
- per container, (containerPort, protocol) is unique (the list's map keys, which server-side
  apply and `kubectl apply` rely on): the same port on a second address goes to the next
  container that does not declare it yet, or is skipped with a note;
- port names are IANA service names of at most 15 characters, unique in the pod;
- a declared port is never removed or changed: the plan only appends.

Ranges are expanded one port per entry, up to MAX_DECLARED_PORTS per pod; a range that would go
beyond is not declared (noted), and the extender keeps honouring it from the annotation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from extender.core.pods import LISTEN_ANNOTATION
from extender.core.portspec import (
    WILDCARD,
    PortSpec,
    normalize_ip,
    normalize_protocol,
    parse_port_specs,
)
from extender.errors import PortSpecError

MAX_DECLARED_PORTS = 32
"""Ports one pod may gain: enough for real agents, small enough to keep the pod readable."""
NAME_PREFIX = "hpl"
"""Generated names: `hpl<port><t|u|s>` (`hpl80t`), `-<n>` added on a clash: at most 13 chars."""


@dataclass(frozen=True, slots=True)
class DeclaredPort:
    """One container port to append to `spec.containers[container]`."""

    container: int
    container_name: str
    name: str
    port: int
    protocol: str
    host_ip: str

    @property
    def spec(self) -> str:
        """The entry in the annotation syntax, e.g. `80/TCP@169.254.170.23`."""
        return str(PortSpec(self.protocol, self.port, self.port, self.host_ip))

    def as_json(self) -> dict[str, Any]:
        """The ContainerPort object, as the API expects it."""
        port: dict[str, Any] = {
            "name": self.name,
            "containerPort": self.port,
            "hostPort": self.port,
            "protocol": self.protocol,
        }
        if self.host_ip:
            port["hostIP"] = self.host_ip
        return port


@dataclass(frozen=True, slots=True)
class ListenPlan:
    """What to declare for one pod, what was left out and why, or why nothing can be."""

    added: tuple[DeclaredPort, ...] = ()
    notes: tuple[str, ...] = ()
    error: str = ""
    """Set when the annotation cannot be read: nothing is declared at all."""

    @property
    def summary(self) -> str:
        """The added entries in the annotation syntax, comma-separated ("" when none)."""
        return ",".join(port.spec for port in self.added)


def plan_listen_ports(raw_pod: Mapping[str, Any]) -> ListenPlan:
    """The container ports that would declare this pod's annotated listeners."""
    metadata = raw_pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    text = annotations.get(LISTEN_ANNOTATION) if isinstance(annotations, Mapping) else None
    if text is None:
        return ListenPlan()
    spec = raw_pod.get("spec")
    if not isinstance(spec, Mapping) or spec.get("hostNetwork") is not True:
        return ListenPlan(notes=(f"{LISTEN_ANNOTATION} is declared only for hostNetwork pods",))
    if not isinstance(text, str):
        return ListenPlan(error=f"{LISTEN_ANNOTATION} must be a string")
    try:
        wanted = parse_port_specs(text)
    except PortSpecError as error:
        return ListenPlan(error=f"{LISTEN_ANNOTATION} is invalid, no port declared: {error}")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return ListenPlan(notes=("the pod has no containers to declare ports on",))
    try:
        existing = _ExistingPorts(containers, spec.get("initContainers"))
    except ValueError as error:
        return ListenPlan(error=f"cannot read the declared ports: {error}")
    added: list[DeclaredPort] = []
    notes: list[str] = []
    for entry in wanted:
        size = entry.last - entry.first + 1
        if len(added) + size > MAX_DECLARED_PORTS:
            notes.append(
                f"{entry} not declared: {size} ports, over the {MAX_DECLARED_PORTS} a pod may "
                "gain (the extender still honours it)"
            )
            continue
        for port in range(entry.first, entry.last + 1):
            outcome = existing.place(port, entry.protocol, entry.ip, containers)
            if isinstance(outcome, DeclaredPort):
                added.append(outcome)
            elif outcome:
                notes.append(outcome)
    return ListenPlan(tuple(added), tuple(dict.fromkeys(notes)))


def json_patch(plan: ListenPlan, raw_pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """RFC 6902 operations appending the plan's ports (creating `ports` where there is none)."""
    spec = raw_pod.get("spec")
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    if not plan.added or not isinstance(containers, list):
        return []
    operations: list[dict[str, Any]] = []
    by_container: dict[int, list[DeclaredPort]] = {}
    for port in plan.added:
        by_container.setdefault(port.container, []).append(port)
    for index, ports in sorted(by_container.items()):
        container = containers[index]
        path = f"/spec/containers/{index}/ports"
        if isinstance(container, Mapping) and isinstance(container.get("ports"), list):
            operations.extend(
                {"op": "add", "path": path + "/-", "value": p.as_json()} for p in ports
            )
        else:
            operations.append({"op": "add", "path": path, "value": [p.as_json() for p in ports]})
    return operations


_PROTOCOL_LETTER = {"TCP": "t", "UDP": "u", "SCTP": "s"}


class _ExistingPorts:
    """The pod's declared ports and names, updated as the plan adds to them."""

    def __init__(self, containers: Sequence[Any], init_containers: object) -> None:
        self.host_keys: set[tuple[str, str, int]] = set()
        """(hostIP, protocol, hostPort) held by the pod: what validation keeps unique."""
        self.container_keys: list[set[tuple[int, str]]] = []
        """Per container, (containerPort, protocol): the list's map keys."""
        self.names: set[str] = set()
        groups: list[tuple[bool, Sequence[Any]]] = [(True, containers)]
        if isinstance(init_containers, list):
            groups.append((False, init_containers))
        for regular, group in groups:
            for container in group:
                keys: set[tuple[int, str]] = set()
                ports = container.get("ports") if isinstance(container, Mapping) else None
                for port in ports if isinstance(ports, list) else ():
                    if not isinstance(port, Mapping):
                        raise ValueError("a container port is not an object")
                    number = port.get("containerPort")
                    if not isinstance(number, int) or isinstance(number, bool):
                        raise ValueError(f"containerPort {number!r} is not a number")
                    protocol = normalize_protocol(_text(port.get("protocol")))
                    # hostNetwork: the API server defaults hostPort to containerPort.
                    host_port = port.get("hostPort") or number
                    if not isinstance(host_port, int) or isinstance(host_port, bool):
                        raise ValueError(f"hostPort {host_port!r} is not a number")
                    self.host_keys.add(
                        (normalize_ip(_text(port.get("hostIP"))), protocol, host_port)
                    )
                    keys.add((number, protocol))
                    if isinstance(port.get("name"), str):
                        self.names.add(port["name"])
                if regular:
                    self.container_keys.append(keys)

    def place(
        self, port: int, protocol: str, ip: str, containers: Sequence[Any]
    ) -> DeclaredPort | str:
        """The port to add, or why it is not added ("" when it is simply declared already)."""
        if (ip, protocol, port) in self.host_keys or (WILDCARD, protocol, port) in self.host_keys:
            return ""
        for index, keys in enumerate(self.container_keys):
            if (port, protocol) in keys:
                continue
            keys.add((port, protocol))
            self.host_keys.add((ip, protocol, port))
            container = containers[index]
            name = container.get("name") if isinstance(container, Mapping) else None
            return DeclaredPort(
                index,
                name if isinstance(name, str) else "",
                self._new_name(port, protocol),
                port,
                protocol,
                ip,
            )
        spec = PortSpec(protocol, port, port, ip)
        return (
            f"{spec} not declared: every container already lists containerPort "
            f"{port}/{protocol}, and a container lists a port/protocol once "
            "(the extender still honours it)"
        )

    def _new_name(self, port: int, protocol: str) -> str:
        base = f"{NAME_PREFIX}{port}{_PROTOCOL_LETTER[protocol]}"
        name = base
        suffix = 1
        while name in self.names:
            suffix += 1
            name = f"{base}-{suffix}"
        self.names.add(name)
        return name


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
