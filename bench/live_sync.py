"""How fast live mode syncs, follows a burst of events and relists, against the fake API server.

    .venv/bin/python -m bench.live_sync [--nodes 1000] [--pods 30000] [--burst 5000]

The fake server runs in the same process and event loop over TLS, so every figure includes its
own cost (JSON encoding, TLS, HTTP chunking): read them as upper bounds for the extender's side.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from extender.core.cluster import Cluster
from extender.kube.informer import PODS
from extender.kube.kubeauth import load_connection
from extender.server.live import Live
from extender.settings import Settings
from tests.fakeapi import FakeApiServer, Pki


def raw_pod(i: int, nodes: int, phase: str = "Running") -> dict[str, Any]:
    """Every third pod holds a hostPort; the rest hold nothing (as in real clusters)."""
    ports = [{"containerPort": 8080, "hostPort": 30000 + i % 1000}] if i % 3 == 0 else []
    return {
        "metadata": {"name": f"pod-{i}", "namespace": f"ns-{i % 50}", "labels": {"app": "x"}},
        "spec": {
            "nodeName": f"node-{i % nodes}",
            "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10", "ports": ports}],
        },
        "status": {"phase": phase},
    }


async def wait_for(condition: Callable[[], bool]) -> float:
    """Seconds until `condition()` holds (polled every millisecond)."""
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > 300:
            raise SystemExit("gave up after 300 s: the informer did not get there")
        await asyncio.sleep(0.001)
    return time.perf_counter() - start


class LoopLag:
    """The longest time the event loop was blocked (a filter call would have waited that long)."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def watch(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, time.perf_counter() - before - 0.001)

    def take(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst


async def main(nodes: int, pods: int, burst: int) -> None:
    lag = LoopLag()
    ticker = asyncio.create_task(lag.watch())
    with tempfile.TemporaryDirectory() as directory:
        fake = FakeApiServer(token="t", pki=Pki.create(Path(directory)), history_limit=burst * 2)
        for n in range(nodes):
            fake.put("nodes", {"metadata": {"name": f"node-{n}"}})
        for i in range(pods):
            fake.put("pods", raw_pod(i, nodes))
        await fake.start()
        kubeconfig = fake.write_kubeconfig(Path(directory) / "config", token="t")
        cluster = Cluster(Settings())
        live = Live(load_connection(str(kubeconfig)), cluster)
        lifetime = live.run_informers(web.Application())
        await anext(lifetime)
        synced = await wait_for(lambda: live.readiness.check() is None)
        print(f"initial sync: {nodes} nodes, {pods} pods in {synced:.2f} s")
        lag.take()

        def caught_up() -> bool:
            return live.pods.status().resource_version == str(fake.rv)

        start = time.perf_counter()
        for i in range(burst):
            moved = raw_pod(i, nodes)
            moved["metadata"]["labels"] = {"app": "y"}
            fake.put("pods", moved)
        followed = await wait_for(caught_up) + (time.perf_counter() - start)
        lag.take()  # the burst itself is written synchronously by this loop: not our lag
        print(
            f"watch burst: {burst} MODIFIED events applied in {followed:.2f} s "
            f"({burst / followed:,.0f} events/s incl. the fake's encoding)"
        )

        fake.pause_watches()  # the deletions never reach the open watch ...
        for i in range(pods // 10):
            fake.remove("pods", f"ns-{i % 50}/pod-{i}")
        fake.compact()  # ... and fall out of the history: only a relist can see them
        start = time.perf_counter()
        fake.expire_watches()  # ERROR 410 Expired: the informer relists at once, no backoff
        await wait_for(lambda: live.pods.status().relists == 1 and caught_up())
        relisted = time.perf_counter() - start
        worst_lag = lag.take()
        fake.resume_watches()
        truth = Cluster(Settings())
        truth.nodes.replace(list(fake.truth("nodes").values()))
        truth.pods.replace(list(fake.truth("pods", PODS.field_selector).values()))
        same = truth.index.fingerprint() == cluster.index.fingerprint()
        print(
            f"410 relist + diff of {pods - pods // 10} pods ({pods // 10} gone): "
            f"{relisted:.2f} s; index equals a fresh list: {same}; "
            f"longest event-loop stall {worst_lag * 1000:.0f} ms "
            "(the fake's list encoding included)"
        )
        await anext(lifetime, None)
        await fake.stop()
    ticker.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=30000)
    parser.add_argument("--burst", type=int, default=5000)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.nodes, arguments.pods, arguments.burst))
