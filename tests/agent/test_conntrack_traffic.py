"""The statsd incident, replayed with real packets: a UDP port moves from a hostPort pod to a host
process, the client's conntrack entry keeps sending to the pod, the agent's flush fixes it.

Three namespaces: `client` (192.168.50.2) -- `node` (192.168.50.1, 10.244.1.1) -- `pod`
(10.244.1.7). The node DNATs 192.168.50.1:8125/UDP to the pod with an nftables rule, as the CNI
portmap plugin does for a hostPort.
"""

from __future__ import annotations

import select
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.namespaces import PYTHON, ip, network_namespace, run_in, start_in

RECEIVER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 8125))
print("ready", flush=True)
while True:
    print(sock.recv(100).decode(), flush=True)
"""

SEND = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("192.168.50.2", 40000))  # the same source port every time: one conntrack entry
sock.sendto(sys.argv[1].encode(), ("192.168.50.1", 8125))
"""

# Shaped like CNI portmap's: the base chain jumps to a chain per pod that holds its DNAT, and
# removing a pod empties its chain only. A second hostPort pod keeps a DNAT rule of its own, as
# on any real node (kube-proxy, other hostPorts): on 6.18, once a network namespace has no DNAT
# expression left at all, existing flows stop being translated too, which would hide the incident.
NAT_RULES = """
table ip portmap {
    chain hostport-dnat-statsd {
        ip daddr 192.168.50.1 udp dport 8125 dnat to 10.244.1.7:8125
    }
    chain hostport-dnat-other {
        udp dport 9999 dnat to 10.244.1.8:9999
    }
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        fib daddr type local jump hostport-dnat-statsd
        fib daddr type local jump hostport-dnat-other
    }
}
"""


@dataclass(frozen=True, slots=True)
class Topology:
    client: str
    node: str
    pod: str


def _link(a: str, b: str, a_addr: str, b_addr: str, b_if: str) -> None:
    """A veth between namespaces `a` (eth0, `a_addr`) and `b` (`b_if`, `b_addr`)."""
    ip("link", "add", "eth0", "netns", a, "type", "veth", "peer", "name", b_if, "netns", b)
    ip("-n", a, "addr", "add", a_addr, "dev", "eth0")
    ip("-n", b, "addr", "add", b_addr, "dev", b_if)
    ip("-n", a, "link", "set", "eth0", "up")
    ip("-n", b, "link", "set", b_if, "up")


def _sh(name: str, command: str, stdin: str = "") -> None:
    result = run_in(name, ["sh", "-c", command], stdin=stdin)
    assert result.returncode == 0, f"{command}: {result.stderr}"


@pytest.fixture
def topology() -> Iterator[Topology]:
    """Client, node and pod namespaces wired with veths; the node forwards and DNATs 8125/UDP."""
    if shutil.which("nft") is None:
        pytest.fail("this test builds the hostPort DNAT with nft: apt-get install -y nftables")
    with (
        network_namespace("hpx-client") as client,
        network_namespace("hpx-node") as node,
        network_namespace("hpx-pod") as pod,
    ):
        _link(client, node, "192.168.50.2/24", "192.168.50.1/24", "c0")
        _link(pod, node, "10.244.1.7/24", "10.244.1.1/24", "p0")
        ip("-n", pod, "route", "add", "default", "via", "10.244.1.1")
        _sh(node, "echo 1 > /proc/sys/net/ipv4/ip_forward")
        _sh(node, "nft -f -", stdin=NAT_RULES)
        yield Topology(client, node, pod)


class Receiver:
    """A UDP receiver on 0.0.0.0:8125 in a namespace; `next()` returns the next datagram."""

    def __init__(self, name: str) -> None:
        self.process = start_in(name, [PYTHON, "-c", RECEIVER])
        assert self.next() == "ready"

    def next(self) -> str:
        """The next line the receiver printed; fails after 60 s (a hang guard, not a measure)."""
        assert self.process.stdout is not None
        readable, _, _ = select.select([self.process.stdout], [], [], 60)
        if not readable:
            pytest.fail("no datagram arrived within 60 s")
        return self.process.stdout.readline().strip()

    def stop(self) -> None:
        """Kill the receiver we started (by its Popen handle) and reap it."""
        self.process.kill()
        self.process.communicate(timeout=60)


def _send(topology: Topology, text: str) -> None:
    result = run_in(topology.client, [PYTHON, "-c", SEND, text])
    assert result.returncode == 0, result.stderr


def test_flush_sends_the_client_to_the_new_host_listener(topology: Topology) -> None:
    """Before the flush the rule-less DNAT still reaches the old pod; after it, the host."""
    old_pod = Receiver(topology.pod)
    try:
        _send(topology, "via-hostport")
        assert old_pod.next() == "via-hostport"
        # The pod moves to hostNetwork: portmap's rule goes (the chain stays), the host listens.
        _sh(topology.node, "nft flush chain ip portmap hostport-dnat-statsd")
        host = Receiver(topology.node)
        try:
            _send(topology, "after-move")
            assert old_pod.next() == "after-move"  # the incident: still DNATed to the old pod
            agent = run_in(
                topology.node,
                [PYTHON, "-m", "extender", "agent", "--once", "--flush-stale-udp-conntrack"],
            )
            assert agent.returncode == 0, agent.stderr
            assert (
                "flushed stale UDP conntrack entry 192.168.50.2:40000 -> 192.168.50.1:8125"
                " (DNAT to 10.244.1.7:8125)"
            ) in agent.stderr
            _send(topology, "after-flush")
            assert host.next() == "after-flush"
        finally:
            host.stop()
    finally:
        old_pod.stop()


def test_no_flush_while_nothing_listens_on_the_host(topology: Topology) -> None:
    """A live hostPort mapping with no host listener on its port is left alone."""
    pod = Receiver(topology.pod)
    try:
        _send(topology, "one")
        assert pod.next() == "one"
        agent = run_in(
            topology.node,
            [PYTHON, "-m", "extender", "agent", "--once", "--flush-stale-udp-conntrack"],
        )
        assert agent.returncode == 0, agent.stderr
        assert "flushed" not in agent.stderr
        _send(topology, "two")
        assert pod.next() == "two"
    finally:
        pod.stop()
