"""The kernel's socket tables (`/proc/net/tcp`, `tcp6`, `udp`, `udp6`, `sctp/eps`) as listeners.

Pure: text in, records out; the agent command (agent/command.py) does the reading. A listener is
what takes a port away from everyone else on the node: a TCP socket in LISTEN, a UDP socket that
is bound but not connected (a connected UDP socket is a client), an SCTP endpoint that listens.
Imports only extender.core.portspec and extender.errors.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from extender.core.portspec import normalize_ip
from extender.errors import ExtenderError

TCP_LISTEN = 0x0A
"""`st` column of a listening TCP socket (include/net/tcp_states.h: TCP_LISTEN)."""

SCTP_LISTENING = 10
"""`SST` column of a listening SCTP endpoint (SCTP_SS_LISTENING == TCP_LISTEN)."""


class ProcNetError(ExtenderError, ValueError):
    """A socket table line that does not look like the kernel's; the message names the line."""


@dataclass(frozen=True, slots=True, order=True)
class Listener:
    """One port held on the node: `ip` is normalised ("" for every address, IPv4 for v4-mapped)."""

    protocol: str
    port: int
    ip: str


@dataclass(frozen=True, slots=True)
class PortRange:
    """The ephemeral range the kernel picks client ports from, minus the ports reserved from it.

    A UDP socket bound inside the range is almost always a client that called sendto() without
    bind(); reserved ports (`ip_local_reserved_ports`) are never handed out that way, so a
    socket on one of them was bound on purpose and stays a listener.
    """

    first: int
    last: int
    reserved: frozenset[int] = frozenset()

    def is_ephemeral(self, port: int) -> bool:
        """Whether the kernel could have picked `port` for an unbound client socket."""
        return self.first <= port <= self.last and port not in self.reserved


def decode_address(text: str) -> str:
    """Decode a `/proc/net` hex address (`0100007F`, 32 hex digits for IPv6) to normalised text.

    The kernel prints each 32-bit word of the address in host byte order, so on little-endian
    machines every 4-byte group is reversed; v4-mapped and wildcard addresses are folded by
    `normalize_ip` so they compare equal to what pods and annotations declare.
    """
    if len(text) not in (8, 32):
        raise ValueError(f"address {text!r} is neither 8 nor 32 hex digits")
    try:
        raw = bytes.fromhex(text)
    except ValueError as error:
        raise ValueError(f"address {text!r} is not hexadecimal") from error
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(packed)
    return normalize_ip(address.compressed)


def _split_endpoint(text: str) -> tuple[str, int]:
    address, colon, port_hex = text.partition(":")
    if not colon:
        raise ValueError(f"endpoint {text!r} has no ':PORT'")
    try:
        port = int(port_hex, 16)
    except ValueError as error:
        raise ValueError(f"port {port_hex!r} is not hexadecimal") from error
    return decode_address(address), port


def parse_inet_table(text: str, protocol: str, source: str = "") -> list[Listener]:
    """Listeners in one of `/proc/net/{tcp,tcp6,udp,udp6}`; `protocol` is "TCP" or "UDP".

    TCP counts sockets in LISTEN. UDP counts sockets whose remote end is all zeros (bound, not
    connected), whatever their state column says. `source` names the file in error messages.
    """
    if protocol not in ("TCP", "UDP"):
        raise ValueError(f"protocol {protocol!r}: only TCP and UDP have inet tables")
    listeners: list[Listener] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == "sl":
            continue
        try:
            if len(fields) < 4 or not fields[0].endswith(":"):
                raise ValueError("want 'sl: local_address rem_address st ...'")
            ip, port = _split_endpoint(fields[1])
            remote_ip, remote_port = _split_endpoint(fields[2])
            state = int(fields[3], 16)
        except ValueError as error:
            where = f"{source or protocol} line {number}"
            raise ProcNetError(f"{where}: {error}: {line.strip()!r}") from error
        if protocol == "TCP":
            if state != TCP_LISTEN:
                continue
        elif remote_ip or remote_port:
            continue
        listeners.append(Listener(protocol, port, ip))
    return listeners


def parse_sctp_eps(text: str, source: str = "sctp/eps") -> list[Listener]:
    """Listeners in `/proc/net/sctp/eps`: one per local address of each listening endpoint.

    Columns: ENDPT SOCK STY SST HBKT LPORT UID INODE LADDRS..., addresses printed as text
    (IPv6 uncompressed, `%pI6`), a multi-homed endpoint listing several.
    """
    listeners: list[Listener] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == "ENDPT":
            continue
        try:
            if len(fields) < 9:
                raise ValueError("want 'ENDPT SOCK STY SST HBKT LPORT UID INODE LADDRS...'")
            state = int(fields[3])
            port = int(fields[5])
            addresses = [normalize_ip(field.lstrip("*")) for field in fields[8:]]
        except ValueError as error:
            raise ProcNetError(f"{source} line {number}: {error}: {line.strip()!r}") from error
        if state != SCTP_LISTENING:
            continue
        listeners.extend(Listener("SCTP", port, ip) for ip in addresses)
    return listeners


def parse_port_range(range_text: str, reserved_text: str = "") -> PortRange:
    """`ip_local_port_range` ("32768\\t60999") and `ip_local_reserved_ports` ("2703,9808-9809")."""
    parts = range_text.split()
    try:
        if len(parts) != 2:
            raise ValueError("want two numbers")
        first, last = int(parts[0]), int(parts[1])
    except ValueError as error:
        raise ProcNetError(f"ip_local_port_range {range_text.strip()!r}: {error}") from error
    reserved: set[int] = set()
    for entry in reserved_text.strip().split(","):
        if not entry.strip():
            continue
        low, dash, high = entry.strip().partition("-")
        try:
            reserved.update(range(int(low), int(high if dash else low) + 1))
        except ValueError as error:
            message = f"ip_local_reserved_ports entry {entry.strip()!r}: {error}"
            raise ProcNetError(message) from error
    return PortRange(first, last, frozenset(reserved))


def select_listeners(
    listeners: Iterable[Listener], ephemeral: PortRange | None
) -> frozenset[Listener]:
    """De-duplicate (SO_REUSEPORT groups show once per socket) and drop ephemeral UDP noise.

    `ephemeral=None` keeps every UDP socket (the agent's `--include-ephemeral-udp`).
    """
    return frozenset(
        listener
        for listener in listeners
        if ephemeral is None
        or listener.protocol != "UDP"
        or not ephemeral.is_ephemeral(listener.port)
    )
