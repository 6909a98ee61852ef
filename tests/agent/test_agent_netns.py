"""`agent --once -o json` in real network namespaces sees exactly the sockets that hold ports."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.namespaces import PYTHON, ip, network_namespace, run_in, start_in

# Runs inside the namespace: opens the sockets described by the JSON on stdin's first line,
# prints the ephemeral ports the kernel chose, then holds everything until stdin closes.
SOCKETS_SCRIPT = r"""
import json, socket, sys

spec = json.loads(sys.stdin.readline())
held, chosen = [], []
FAMILY = {"4": socket.AF_INET, "6": socket.AF_INET6}
for kind, family, address, port in spec:
    kind_of = socket.SOCK_STREAM if kind.startswith("tcp") else socket.SOCK_DGRAM
    sock = socket.socket(FAMILY[family], kind_of)
    held.append(sock)
    if family == "6":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    if kind == "tcp-listen":
        sock.bind((address, port)); sock.listen()
    elif kind == "tcp-bound":          # bound, never listening: holds nothing for others
        sock.bind((address, port))
    elif kind == "tcp-connection":     # an established pair to a listener opened earlier
        sock.connect((address, port)); held.append(held[-2].accept()[0])
    elif kind == "udp-bound":
        sock.bind((address, port))
    elif kind == "udp-connected":      # a client: connect() picks an ephemeral source port
        sock.connect((address, port)); chosen.append(sock.getsockname()[1])
    elif kind == "udp-sendto":         # a client that never binds: sendto() autobinds
        sock.sendto(b"x", (address, port)); chosen.append(sock.getsockname()[1])
    elif kind == "udp-port-zero":      # bind to port 0: an ephemeral, unconnected socket
        sock.bind((address, 0)); chosen.append(sock.getsockname()[1])
print(json.dumps(chosen), flush=True)
sys.stdin.read()
"""

RESERVED = 40001
"""Reserved inside the namespace's ephemeral range, so a socket bound to it is deliberate."""

BUSY: list[tuple[str, str, str, int]] = [
    ("tcp-listen", "4", "169.254.170.23", 80),
    ("tcp-listen", "6", "fd00:ec2::23", 80),
    ("tcp-listen", "4", "0.0.0.0", 9100),
    ("tcp-listen", "6", "::", 9101),
    ("tcp-listen", "6", "::ffff:10.77.0.1", 2703),
    ("tcp-listen", "6", "fd00:77::1", 8443),
    ("tcp-listen", "4", "10.77.0.1", 10250),
    ("tcp-connection", "4", "10.77.0.1", 10250),
    ("tcp-bound", "4", "10.77.0.1", 7000),
    ("udp-bound", "4", "0.0.0.0", 8125),
    ("udp-bound", "6", "::", 8126),
    ("udp-bound", "4", "10.77.0.1", 53),
    ("udp-bound", "6", "fd00:ec2::23", 5353),
    ("udp-bound", "4", "127.0.0.1", RESERVED),
    ("udp-connected", "4", "10.77.0.1", 53),
    ("udp-sendto", "6", "fd00:77::1", 8126),
    ("udp-port-zero", "4", "0.0.0.0", 0),
]
BUSY_EXPECTED = [
    {"port": 53, "protocol": "UDP", "ip": "10.77.0.1"},
    {"port": 80, "protocol": "TCP", "ip": "169.254.170.23"},
    {"port": 80, "protocol": "TCP", "ip": "fd00:ec2::23"},
    {"port": 2703, "protocol": "TCP", "ip": "10.77.0.1"},
    {"port": 5353, "protocol": "UDP", "ip": "fd00:ec2::23"},
    {"port": 8125, "protocol": "UDP", "ip": ""},
    {"port": 8126, "protocol": "UDP", "ip": ""},
    {"port": 8443, "protocol": "TCP", "ip": "fd00:77::1"},
    {"port": 9100, "protocol": "TCP", "ip": ""},
    {"port": 9101, "protocol": "TCP", "ip": ""},
    {"port": 10250, "protocol": "TCP", "ip": "10.77.0.1"},
    {"port": RESERVED, "protocol": "UDP", "ip": "127.0.0.1"},
]

QUIET: list[tuple[str, str, str, int]] = [("udp-bound", "6", "::", 8125)]
QUIET_EXPECTED = [{"port": 8125, "protocol": "UDP", "ip": ""}]


def _prepare(name: str) -> None:
    """Addresses like a node's: link-local and ULA on lo, a veth pair with v4 and v6."""
    ip("-n", name, "addr", "add", "169.254.170.23/32", "dev", "lo")
    ip("-n", name, "addr", "add", "fd00:ec2::23/128", "dev", "lo", "nodad")
    ip("-n", name, "link", "add", "node0", "type", "veth", "peer", "name", "node1")
    ip("-n", name, "addr", "add", "10.77.0.1/24", "dev", "node0")
    ip("-n", name, "addr", "add", "fd00:77::1/64", "dev", "node0", "nodad")
    ip("-n", name, "link", "set", "node0", "up")
    ip("-n", name, "link", "set", "node1", "up")
    sysctl = f"echo {RESERVED} > /proc/sys/net/ipv4/ip_local_reserved_ports"
    result = run_in(name, ["sh", "-c", sysctl])
    assert result.returncode == 0, result.stderr


class Sockets:
    """The socket-holding process in a namespace; `ephemeral` lists the client ports it got."""

    def __init__(self, name: str, spec: list[tuple[str, str, str, int]]) -> None:
        self.process = start_in(name, [PYTHON, "-c", SOCKETS_SCRIPT])
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(spec) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            _, error = self.process.communicate(timeout=60)
            pytest.fail(f"the socket holder failed: {error}")
        self.ephemeral: list[int] = json.loads(line)

    def close(self) -> None:
        """Release every socket: closing stdin ends the process; wait for it to exit."""
        if self.process.returncode is None:
            self.process.communicate(timeout=60)


@pytest.fixture
def namespaces() -> Iterator[dict[str, tuple[str, Sockets]]]:
    """Two namespaces holding different sockets (each deleted afterwards)."""
    with network_namespace("hpx-busy") as busy, network_namespace("hpx-quiet") as quiet:
        _prepare(busy)
        holders = {"busy": (busy, Sockets(busy, BUSY)), "quiet": (quiet, Sockets(quiet, QUIET))}
        try:
            yield holders
        finally:
            for _, sockets in holders.values():
                sockets.close()


def _agent(name: str, *extra: str) -> Any:
    result = run_in(name, [PYTHON, "-m", "extender", "agent", "--once", "-o", "json", *extra])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_agent_sees_exactly_the_listeners(namespaces: dict[str, tuple[str, Sockets]]) -> None:
    """Listeners on v4/v6/wildcard/specific/v4-mapped addresses; clients and noise left out."""
    assert _agent(namespaces["busy"][0]) == BUSY_EXPECTED
    assert _agent(namespaces["quiet"][0]) == QUIET_EXPECTED


def test_agent_include_ephemeral_udp(namespaces: dict[str, tuple[str, Sockets]]) -> None:
    """--include-ephemeral-udp adds unconnected clients' autobound ports, never connected ones."""
    name, sockets = namespaces["busy"]
    connected, sendto, port_zero = sockets.ephemeral
    seen = {
        (row["protocol"], row["port"], row["ip"]) for row in _agent(name, "--include-ephemeral-udp")
    }
    expected = {(row["protocol"], row["port"], row["ip"]) for row in BUSY_EXPECTED}
    assert seen - expected == {("UDP", sendto, ""), ("UDP", port_zero, "")}
    assert ("UDP", connected, "") not in seen
    assert expected <= seen


def test_agent_annotation_output(namespaces: dict[str, tuple[str, Sockets]]) -> None:
    """-o annotation prints the compact syntax the agent publishes."""
    name, _ = namespaces["quiet"]
    result = run_in(name, [PYTHON, "-m", "extender", "agent", "--once", "-o", "annotation"])
    assert (result.returncode, result.stdout) == (0, "8125/UDP\n")


def test_agent_sees_sockets_closing(namespaces: dict[str, tuple[str, Sockets]]) -> None:
    """Once the holder exits, its namespace has nothing left to report."""
    name, sockets = namespaces["quiet"]
    sockets.close()
    assert _agent(name) == []


def test_agent_once_needs_no_cluster() -> None:
    """--once without NODE_NAME or credentials still works (runs in our own namespace)."""
    result = subprocess.run(
        [PYTHON, "-m", "extender", "agent", "--once"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": "/nonexistent"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout), list)
