"""The `PORT[-END][/PROTO][@IP]` syntax of the project's annotations, and address normalisation.

Pure: no I/O, no asyncio, no Kubernetes. Used by the pod/node decoders (annotations
`hostports.dev/listen`, `hostports.dev/reserved`, `hostports.dev/observed`), by the settings
(cluster-wide reserved ports) and by the node agent, which writes the same syntax back.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from extender.errors import PortSpecError

PROTOCOLS = ("TCP", "UDP", "SCTP")
WILDCARD = ""
"""The normalised form of every "all addresses" bind: "", 0.0.0.0 and :: (see `normalize_ip`)."""

_WILDCARD_TEXTS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


def normalize_ip(text: str) -> str:
    """The canonical text of a host IP, so that equal addresses compare equal as strings.

    "", 0.0.0.0 and :: all become `WILDCARD`: a dual-stack `[::]` socket takes the port on every
    address, so we treat it as a wildcard on purpose (upstream NodePorts treats it as a literal).
    IPv4-mapped IPv6 addresses become their IPv4 form, as that is the address the socket holds.
    Raises ValueError for text that is not an IP address.
    """
    stripped = text.strip()
    if stripped in _WILDCARD_TEXTS:
        return WILDCARD
    if stripped.startswith("[") and stripped.endswith("]"):
        stripped = stripped[1:-1]
    address = ipaddress.ip_address(stripped)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        return WILDCARD
    return address.compressed


def normalize_protocol(text: str | None) -> str:
    """TCP, UDP or SCTP from any casing; missing or empty means TCP, as in the Pod API."""
    if not text:
        return "TCP"
    upper = text.upper()
    if upper not in PROTOCOLS:
        raise ValueError(f"unknown protocol {text!r} (want TCP, UDP or SCTP)")
    return upper


@dataclass(frozen=True, slots=True, order=True)
class PortSpec:
    """One entry of the syntax: ports `first..last` (inclusive) of `protocol` on `ip`."""

    protocol: str
    first: int
    last: int
    ip: str = WILDCARD

    def __str__(self) -> str:
        ports = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        text = f"{ports}/{self.protocol}"
        return f"{text}@{self.ip}" if self.ip else text


def parse_port_spec(entry: str) -> PortSpec:
    """Parse one `PORT[-END][/PROTO][@IP]` entry; PortSpecError quotes the entry when it is bad."""
    text = entry.strip()
    if text.isascii() and text.isdigit() and 1 <= (port := int(text)) <= 65535:
        return PortSpec("TCP", port, port)  # the common bare `PORT`, without the full parse
    if not text:
        raise PortSpecError("empty port entry")
    ports_proto, at, ip_text = text.partition("@")
    if at and not ip_text.strip():
        raise PortSpecError(f"{entry.strip()!r}: '@' must be followed by an IP address")
    ports_text, slash, proto_text = ports_proto.partition("/")
    try:
        protocol = normalize_protocol(proto_text.strip() if slash else None)
        if slash and not proto_text.strip():
            raise ValueError("'/' must be followed by TCP, UDP or SCTP")
        first_text, dash, last_text = ports_text.strip().partition("-")
        first = _parse_port(first_text)
        last = _parse_port(last_text) if dash else first
        if last < first:
            raise ValueError(f"range end {last} is below its start {first}")
        ip = normalize_ip(ip_text) if at else WILDCARD
    except ValueError as error:
        raise PortSpecError(f"{entry.strip()!r}: {error}") from error
    return PortSpec(protocol, first, last, ip)


def _parse_port(text: str) -> int:
    stripped = text.strip()
    if not stripped.isdigit():
        raise ValueError(f"{stripped!r} is not a port number")
    port = int(stripped)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1-65535")
    return port


def split_port_specs(text: str) -> list[str]:
    """The non-empty entries of a comma-separated list, unparsed (to count them first)."""
    return [entry for entry in text.split(",") if entry.strip()]


def parse_port_specs(text: str, entries: Sequence[str] | None = None) -> tuple[PortSpec, ...]:
    """Parse a comma-separated list strictly: the first bad entry raises PortSpecError.

    `entries`, if given, is `split_port_specs(text)` already done by the caller.
    """
    return tuple(parse_port_spec(entry) for entry in entries or split_port_specs(text))


def parse_port_specs_lenient(
    text: str, entries: Sequence[str] | None = None
) -> tuple[tuple[PortSpec, ...], tuple[str, ...]]:
    """Parse what can be parsed and report the rest, for objects already in the cluster.

    A typo in one entry of a node's annotation must not release the ports its other entries hold.
    """
    specs: list[PortSpec] = []
    problems: list[str] = []
    for entry in entries or split_port_specs(text):
        try:
            specs.append(parse_port_spec(entry))
        except PortSpecError as error:
            problems.append(str(error))
    return tuple(specs), tuple(problems)


def merge_port_specs(specs: Iterable[PortSpec]) -> tuple[PortSpec, ...]:
    """Sort and merge overlapping or adjacent ranges of the same protocol and address."""
    merged: list[PortSpec] = []
    for spec in sorted(specs, key=lambda s: (s.protocol, s.ip, s.first, s.last)):
        if merged:
            previous = merged[-1]
            same_key = previous.protocol == spec.protocol and previous.ip == spec.ip
            if same_key and spec.first <= previous.last + 1:
                if spec.last > previous.last:
                    merged[-1] = PortSpec(spec.protocol, previous.first, spec.last, spec.ip)
                continue
        merged.append(spec)
    return tuple(merged)


def format_port_specs(specs: Iterable[PortSpec]) -> str:
    """The compact annotation text of `specs`, ranges merged: `80/TCP@10.0.0.1,8125/UDP`."""
    return ",".join(str(spec) for spec in merge_port_specs(specs))
