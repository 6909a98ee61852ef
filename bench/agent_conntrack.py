"""Cost of one conntrack check on a busy node: N unrelated UDP entries, one stale DNAT entry.

Run as root: .venv/bin/python bench/agent_conntrack.py [N]. Creates a throw-away network
namespace, fills its conntrack table over netlink, times `ConntrackFlusher.observe` for one newly
listening port, deletes the namespace.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import uuid

from pyroute2.conntrack import AsyncConntrack
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from extender.agent.conntrack import ConntrackFlusher
from extender.agent.procnet import Listener


def _tuple(src: str, sport: int, dst: str, dport: int) -> NFCTAttrTuple:
    return NFCTAttrTuple(saddr=src, sport=sport, daddr=dst, dport=dport, proto=socket.IPPROTO_UDP)


async def main(count: int, netns: str) -> None:
    ct = AsyncConntrack(netns=netns)
    start = time.perf_counter()
    for i in range(count):  # DNS-like client flows from many pods to a resolver
        client = f"10.244.{i // 60000 % 250}.{i // 250 % 250 + 1}"
        await ct.entry(
            "add",
            timeout=600,
            tuple_orig=_tuple(client, 1024 + i % 60000, "10.96.0.10", 53),
            tuple_reply=_tuple("10.244.9.9", 53, client, 1024 + i % 60000),
        )
    await ct.entry(
        "add",
        timeout=600,
        tuple_orig=_tuple("10.244.2.5", 40000, "127.0.0.1", 8125),
        tuple_reply=_tuple("10.244.1.7", 8125, "10.244.2.5", 40000),
    )
    filled = time.perf_counter() - start
    ct.close()
    flusher = ConntrackFlusher(netns=netns)
    start = time.perf_counter()
    flushed = await flusher.observe(frozenset({Listener("UDP", 8125, "")}))
    elapsed = time.perf_counter() - start
    print(f"{count} unrelated UDP entries (filled in {filled:.1f} s): one check took")
    print(
        f"  {elapsed * 1000:.1f} ms, flushed {len(flushed)} entry: {flushed[0] if flushed else '-'}"
    )


if __name__ == "__main__":
    name = f"hpx-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000, name))
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)
