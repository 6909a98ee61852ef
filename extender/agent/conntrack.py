"""`agent --flush-stale-udp-conntrack`: stop UDP clients sending into a pod that is gone.

The incident (amazon-vpc-cni-k8s #2958, containernetworking/plugins #1190): a UDP port moves from
a hostPort pod (portmap DNATs node:8125 to podIP:8125) to a hostNetwork process on the node. The
portmap rule goes away, but a statsd client that keeps sending from the same source port keeps
refreshing its conntrack entry, and an existing entry keeps its NAT: the packets still go to the
dead pod IP, forever, and the new host listener sees nothing.

How the agent learns the owner change, from local facts only: a UDP port starts listening in the
host's network namespace (it was not in the previous observation; at start-up every listener is
new), and conntrack holds entries whose original destination is that port on an address of this
node (or exactly the listener's address) while their reply comes from an address that is NOT
on this node: they are DNATed elsewhere, to the old pod. Those entries are deleted. A port stays
"new" for `window` seconds (default 5 min), because the old pod's DNAT rule may be removed a bit
after the host process binds; while the rule still exists, deleting an entry is harmless (the
next packet is NATed again, to the same place).

Not done: the opposite move (host process -> hostPort pod). The entries then point at the host
itself, the common case for every local UDP service, and telling a stale one from a live one
needs the DNAT rules, which the agent does not read.

Only this module imports pyroute2 (the agent imports it only when the option is on); the
decision (`stale_flows`) is pure.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from pyroute2 import AsyncIPRoute
from pyroute2.conntrack import AsyncConntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from extender.agent.procnet import Listener
from extender.core.portspec import normalize_ip
from extender.errors import ExtenderError

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 300.0


class ConntrackError(ExtenderError):
    """conntrack cannot be read or changed (no CAP_NET_ADMIN, no nf_conntrack in the kernel)."""


@dataclass(frozen=True, slots=True)
class UdpFlow:
    """A UDP conntrack entry, reduced to its two tuples (addresses normalised)."""

    family: int
    orig_src: str
    orig_sport: int
    orig_dst: str
    orig_dport: int
    reply_src: str
    reply_sport: int

    def __str__(self) -> str:
        return (
            f"{self.orig_src}:{self.orig_sport} -> {self.orig_dst}:{self.orig_dport}"
            f" (DNAT to {self.reply_src}:{self.reply_sport})"
        )


def stale_flows(
    flows: Iterable[UdpFlow], new_listeners: Iterable[Listener], local_addresses: frozenset[str]
) -> list[UdpFlow]:
    """The flows that a new host UDP listener should receive but that are DNATed elsewhere.

    A flow matches a listener when its original destination is the listener's port on the
    listener's address (a wildcard listener: any address of this node). It is stale when its
    reply source is not an address of this node, i.e. the kernel translates it to another host
    (the old pod). Flows to other machines' addresses (Service ClusterIPs, remote servers) and
    flows answered locally are left alone.
    """
    by_port: dict[int, list[str]] = {}
    for listener in new_listeners:
        if listener.protocol == "UDP":
            by_port.setdefault(listener.port, []).append(listener.ip)
    stale: list[UdpFlow] = []
    for flow in flows:
        addresses = by_port.get(flow.orig_dport)
        if addresses is None or flow.reply_src in local_addresses:
            continue
        if any(flow.orig_dst == ip if ip else flow.orig_dst in local_addresses for ip in addresses):
            stale.append(flow)
    return stale


class ConntrackFlusher:
    """Watches new UDP listeners and deletes the conntrack entries still DNATed away from them.

    An agent cycle hook: `observe(listeners)` once per observation. `netns` names a network
    namespace (/var/run/netns) to act in instead of our own, which is how the tests use it.
    """

    def __init__(
        self,
        *,
        netns: str | None = None,
        window: float = DEFAULT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._netns = netns
        self._window = window
        self._clock = clock
        self._first_seen: dict[Listener, float] = {}
        self.total = 0
        """Entries flushed since start; logged with each flush (the agent serves no /metrics)."""
        self.registry = registry or CollectorRegistry()
        self.flushed = Counter(
            "hostport_agent_conntrack_flushed",
            "UDP conntrack entries deleted because they DNATed a port now held on the host",
            ["port"],
            registry=self.registry,
        )

    async def check(self) -> None:
        """Fail now, not at the first owner change, when conntrack is out of reach."""
        ct = self._open(AsyncConntrack)
        try:
            await ct.count()
        except (OSError, NetlinkError) as error:
            reason = f"cannot read conntrack: {_reason(error)}"
            if getattr(error, "code", getattr(error, "errno", None)) == errno.EPERM:
                reason += " (--flush-stale-udp-conntrack needs CAP_NET_ADMIN)"
            raise ConntrackError(reason) from error
        finally:
            ct.close()

    async def observe(self, listeners: frozenset[Listener]) -> list[UdpFlow]:
        """Note new UDP listeners; flush stale entries for those still in their window."""
        now = self._clock()
        udp = {listener for listener in listeners if listener.protocol == "UDP"}
        self._first_seen = {listener: self._first_seen.get(listener, now) for listener in udp}
        watched = [
            listener for listener, seen in self._first_seen.items() if now - seen <= self._window
        ]
        if not watched:
            return []
        flows = await self._udp_flows(sorted({listener.port for listener in watched}))
        if not flows:
            return []
        stale = stale_flows(flows, watched, await self._local_addresses())
        for flow in stale:
            await self._delete(flow)
            self.flushed.labels(port=str(flow.orig_dport)).inc()
            self.total += 1
            log.warning(
                "flushed stale UDP conntrack entry %s: port now held on the host (%d so far)",
                flow,
                self.total,
            )
        return stale

    async def _udp_flows(self, ports: list[int]) -> list[UdpFlow]:
        """UDP entries to `ports`, one dump per port and family filtered in the kernel (5.8+).

        A busy node holds many UDP entries (DNS); decoding all of them in Python every cycle
        would cost far more than asking for the few ports that changed owner.
        """
        flows: list[UdpFlow] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            ct = self._open(AsyncConntrack, nfgen_family=family)
            try:
                for port in ports:
                    query = NFCTAttrTuple(family=family, proto=socket.IPPROTO_UDP, dport=port)
                    async for entry in await ct.dump_entries(tuple_orig=query):
                        flow = _flow(family, entry)
                        if flow is not None and flow.orig_dport == port:
                            flows.append(flow)
            except (OSError, NetlinkError) as error:
                raise ConntrackError(
                    f"cannot list UDP conntrack entries: {_reason(error)}"
                ) from error
            finally:
                ct.close()
        return flows

    async def _local_addresses(self) -> frozenset[str]:

        addresses: set[str] = set()
        ipr = self._open(AsyncIPRoute)
        try:
            async for message in await ipr.get_addr():
                text = message.get("IFA_LOCAL") or message.get("IFA_ADDRESS")
                if text:
                    addresses.add(normalize_ip(str(text)))
        except (OSError, NetlinkError) as error:
            raise ConntrackError(f"cannot list this node's addresses: {_reason(error)}") from error
        finally:
            ipr.close()
        return frozenset(addresses)

    async def _delete(self, flow: UdpFlow) -> None:

        ct = self._open(AsyncConntrack, nfgen_family=flow.family)
        tuple_orig = NFCTAttrTuple(
            family=flow.family,
            saddr=flow.orig_src,
            daddr=flow.orig_dst,
            proto=socket.IPPROTO_UDP,
            sport=flow.orig_sport,
            dport=flow.orig_dport,
        )
        try:
            await ct.entry("del", tuple_orig=tuple_orig)
        except NetlinkError as error:
            if error.code != 2:  # ENOENT: the entry expired between the dump and now
                raise ConntrackError(
                    f"cannot delete conntrack entry {flow}: {_reason(error)}"
                ) from error
        except OSError as error:
            raise ConntrackError(
                f"cannot delete conntrack entry {flow}: {_reason(error)}"
            ) from error
        finally:
            ct.close()

    def _open(self, kind: Any, **kwargs: Any) -> Any:
        """A pyroute2 socket in our namespace or `netns`; EPERM becomes a clear error."""
        if self._netns is not None:
            kwargs["netns"] = self._netns
        try:
            return kind(**kwargs)
        except (OSError, NetlinkError) as error:
            raise ConntrackError(f"cannot open a netlink socket: {_reason(error)}") from error


def _reason(error: OSError | NetlinkError) -> str:
    """`Operation not permitted`, not pyroute2's `(1, 'Operation not permitted')`."""
    if isinstance(error, NetlinkError):
        return os.strerror(error.code)
    return error.strerror or str(error)


def _flow(family: int, entry: Any) -> UdpFlow | None:
    """A pyroute2 ConntrackEntry as a UdpFlow; None for anything that is not plain UDP."""
    orig, reply = entry.tuple_orig, entry.tuple_reply
    if orig.proto != socket.IPPROTO_UDP or None in (orig.saddr, orig.daddr, reply.saddr):
        return None
    return UdpFlow(
        family,
        normalize_ip(orig.saddr),
        int(orig.sport),
        normalize_ip(orig.daddr),
        int(orig.dport),
        normalize_ip(reply.saddr),
        int(reply.sport),
    )
