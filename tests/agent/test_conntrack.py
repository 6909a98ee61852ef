"""The stale UDP conntrack flush, on real kernel conntrack entries in a network namespace."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import pytest
from pyroute2.conntrack import AsyncConntrack
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from extender.agent.conntrack import ConntrackFlusher, UdpFlow, stale_flows
from extender.agent.procnet import Listener
from tests.namespaces import PYTHON, ip, network_namespace, run_in, start_in

V4, V6 = socket.AF_INET, socket.AF_INET6
LOCAL = frozenset({"127.0.0.1", "::1", "192.168.50.1", "fd00:50::1"})


def _flow(orig_dst: str, dport: int, reply_src: str, family: int = V4) -> UdpFlow:
    client = "10.244.2.5" if family == V4 else "fd00:244:2::5"
    return UdpFlow(family, client, 40000, orig_dst, dport, reply_src, dport)


@pytest.mark.parametrize(
    ("flow", "listener_ip", "stale"),
    [
        (_flow("192.168.50.1", 8125, "10.244.1.7"), "", True),
        (_flow("fd00:50::1", 8125, "fd00:244:1::7", V6), "", True),
        (_flow("192.168.50.1", 8125, "10.244.1.7"), "192.168.50.1", True),
        (_flow("127.0.0.1", 8125, "10.244.1.7"), "192.168.50.1", False),
        (_flow("192.168.50.1", 9999, "10.244.1.7"), "", False),
        (_flow("10.96.0.10", 8125, "10.244.1.9"), "", False),
        (_flow("192.168.50.1", 8125, "192.168.50.1"), "", False),
        (_flow("192.168.50.1", 8125, "127.0.0.1"), "", False),
    ],
    ids=[
        "dnat-to-old-pod",
        "dnat-to-old-pod-v6",
        "specific-listener-address",
        "other-local-address-than-listener",
        "other-port",
        "service-clusterip-not-local",
        "answered-by-the-host",
        "redirected-locally",
    ],
)
def test_stale_flows(flow: UdpFlow, listener_ip: str, stale: bool) -> None:
    """Only flows to this node's listened port that are NATed off the node are stale."""
    listeners = [Listener("UDP", 8125, listener_ip), Listener("TCP", 9999, "")]
    assert stale_flows([flow], listeners, LOCAL) == ([flow] if stale else [])


def _require_conntrack(name: str) -> None:
    """Fail with the reason when the kernel has no connection tracking to test against."""
    probe = run_in(name, ["cat", "/proc/sys/net/netfilter/nf_conntrack_max"])
    if probe.returncode != 0:
        pytest.fail(
            "this kernel has no nf_conntrack (CONFIG_NF_CONNTRACK, or `modprobe nf_conntrack`): "
            f"the stale UDP conntrack flush cannot be tested here ({probe.stderr.strip()})"
        )


@pytest.fixture
def node() -> Iterator[str]:
    """A namespace standing in for a node: 192.168.50.1 and fd00:50::1 on a veth."""
    with network_namespace("hpx-ct") as name:
        _require_conntrack(name)
        ip("-n", name, "link", "add", "node0", "type", "veth", "peer", "name", "node1")
        ip("-n", name, "addr", "add", "192.168.50.1/24", "dev", "node0")
        ip("-n", name, "addr", "add", "fd00:50::1/64", "dev", "node0", "nodad")
        ip("-n", name, "link", "set", "node0", "up")
        ip("-n", name, "link", "set", "node1", "up")
        yield name


@pytest.fixture
async def conntrack(node: str) -> AsyncIterator[dict[int, AsyncConntrack]]:
    """pyroute2 conntrack sockets inside the node namespace, one per address family."""
    sockets: dict[int, AsyncConntrack] = {
        family: AsyncConntrack(nfgen_family=family, netns=node) for family in (V4, V6)
    }
    try:
        yield sockets
    finally:
        for sock in sockets.values():
            sock.close()


async def _add(ct: dict[int, AsyncConntrack], flow: UdpFlow) -> None:
    """Insert a real entry, as a DNAT rule would have created it (reply from `reply_src`)."""
    orig = NFCTAttrTuple(
        family=flow.family,
        saddr=flow.orig_src,
        daddr=flow.orig_dst,
        proto=socket.IPPROTO_UDP,
        sport=flow.orig_sport,
        dport=flow.orig_dport,
    )
    reply = NFCTAttrTuple(
        family=flow.family,
        saddr=flow.reply_src,
        daddr=flow.orig_src,
        proto=socket.IPPROTO_UDP,
        sport=flow.reply_sport,
        dport=flow.orig_sport,
    )
    await ct[flow.family].entry("add", timeout=300, tuple_orig=orig, tuple_reply=reply)


async def _entries(ct: dict[int, AsyncConntrack]) -> set[tuple[str, int, str]]:
    """(original destination, port, reply source) of every UDP entry in the namespace."""
    found = set()
    for family, sock in ct.items():
        query = NFCTAttrTuple(family=family, proto=socket.IPPROTO_UDP)
        async for entry in await sock.dump_entries(tuple_orig=query):
            found.add((entry.tuple_orig.daddr, entry.tuple_orig.dport, entry.tuple_reply.saddr))
    return found


STALE_V4 = _flow("192.168.50.1", 8125, "10.244.1.7")
STALE_V6 = _flow("fd00:50::1", 8125, "fd00:244:1::7", V6)
KEPT = [
    _flow("192.168.50.1", 9999, "10.244.1.7"),  # another port, still a hostPort pod's
    _flow("10.96.0.10", 8125, "10.244.1.9"),  # a Service on the same port number
    UdpFlow(V4, "10.244.2.6", 40001, "192.168.50.1", 8125, "192.168.50.1", 8125),  # to the host
]


async def test_flush_removes_exactly_the_stale_entries(
    conntrack: dict[int, AsyncConntrack], node: str
) -> None:
    """A new host listener on 8125 flushes the DNAT-to-old-pod entries and nothing else."""
    for flow in [STALE_V4, STALE_V6, *KEPT]:
        await _add(conntrack, flow)
    flusher = ConntrackFlusher(netns=node)
    flushed = await flusher.observe(
        frozenset({Listener("UDP", 8125, ""), Listener("TCP", 9999, "")})
    )
    assert sorted(flushed, key=str) == sorted([STALE_V4, STALE_V6], key=str)
    assert await _entries(conntrack) == {(f.orig_dst, f.orig_dport, f.reply_src) for f in KEPT}
    assert (
        flusher.registry.get_sample_value(
            "hostport_agent_conntrack_flushed_total", {"port": "8125"}
        )
        == 2
    )


async def test_flush_window(conntrack: dict[int, AsyncConntrack], node: str) -> None:
    """Entries reappearing soon after the owner change are flushed; after the window, never."""
    now = [0.0]
    flusher = ConntrackFlusher(netns=node, window=300, clock=lambda: now[0])
    listeners = frozenset({Listener("UDP", 8125, "")})
    assert await flusher.observe(listeners) == []  # the listener is new; nothing to flush yet
    now[0] = 200  # the old pod's DNAT rule was still there a little longer
    await _add(conntrack, STALE_V4)
    assert await flusher.observe(listeners) == [STALE_V4]
    now[0] = 301  # settled: the port has been the host's for longer than the window
    await _add(conntrack, STALE_V4)
    assert await flusher.observe(listeners) == []
    assert await _entries(conntrack) == {("192.168.50.1", 8125, "10.244.1.7")}
    assert await flusher.observe(frozenset()) == []  # the listener went away ...
    now[0] = 302
    assert await flusher.observe(listeners) == [STALE_V4]  # ... and came back: new again


async def test_agent_once_flushes_in_its_own_namespace(
    conntrack: dict[int, AsyncConntrack], node: str
) -> None:
    """`agent --once --flush-stale-udp-conntrack` beside a real UDP listener flushes, says so."""
    await _add(conntrack, STALE_V4)
    await _add(conntrack, KEPT[1])
    holder = start_in(node, [PYTHON, "-c", _UDP_HOLDER])
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        result = run_in(
            node, [PYTHON, "-m", "extender", "agent", "--once", "--flush-stale-udp-conntrack"]
        )
    finally:
        holder.communicate(timeout=60)
    assert result.returncode == 0, result.stderr
    assert (
        "flushed stale UDP conntrack entry 10.244.2.5:40000 -> 192.168.50.1:8125" in result.stderr
    )
    assert '"port":8125,"protocol":"UDP"' in result.stdout
    assert await _entries(conntrack) == {("10.96.0.10", 8125, "10.244.1.9")}


_UDP_HOLDER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 8125))
print("ready", flush=True)
sys.stdin.read()
"""


def test_flush_without_net_admin_is_a_clear_error(node: str) -> None:
    """Without CAP_NET_ADMIN the agent exits 1 naming the problem, not with a traceback."""
    capsh = run_in(node, ["sh", "-c", "command -v setpriv"])
    if capsh.returncode != 0:
        pytest.fail("this test drops capabilities with util-linux's setpriv, which is missing")
    result = run_in(
        node,
        [
            "setpriv",
            "--inh-caps=-net_admin",
            "--bounding-set=-net_admin",
            PYTHON,
            "-m",
            "extender",
            "agent",
            "--once",
            "--flush-stale-udp-conntrack",
        ],
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == (
        "hostport-extender agent: cannot read conntrack: Operation not permitted"
        " (--flush-stale-udp-conntrack needs CAP_NET_ADMIN)"
    )
