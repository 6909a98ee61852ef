"""The pod watch path under load: skipped lines keep the index exact, big bursts share the loop.

A real informer with the cluster's line prefilter, against tests/fakeapi.py over loopback.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from extender.core.cluster import Cluster
from extender.kube import slices
from extender.kube.informer import NODES, PODS, Informer
from extender.kube.kubeapi import KubeApi
from extender.kube.kubeauth import load_connection
from extender.settings import Settings
from tests.fakeapi import FakeApiServer, eventually
from tests.objects import pod, port
from tests.truth import fresh_cluster


@dataclass
class Watched:
    fake: FakeApiServer
    cluster: Cluster
    pods: Informer

    def fresh(self) -> Cluster:
        """What a new extender would build from a consistent list right now."""
        return fresh_cluster(self.fake)

    def in_sync(self) -> bool:
        fresh = self.fresh()
        return (
            self.cluster.index.fingerprint() == fresh.index.fingerprint()
            and set(self.cluster.pods_by_uid) == set(fresh.pods_by_uid)
            and self.pods.status().resource_version == str(self.fake.rv)
        )


def put_new(fake: FakeApiServer, raw: dict[str, Any]) -> None:
    del raw["metadata"]["uid"]  # the API server assigns UIDs
    fake.put("pods", raw)


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[Watched]:
    """Informers feeding a Cluster, the pod informer with the cluster's prefilter (as live.py)."""
    fake = FakeApiServer(token="t", history_limit=100_000)
    for name in ("n1", "n2"):
        fake.put("nodes", {"metadata": {"name": name}})
    put_new(fake, pod("ingress", node="n1", ports=[port(80, 80)]))
    await fake.start()
    kubeconfig = fake.write_kubeconfig(tmp_path / "config", token="t")
    api = KubeApi(load_connection(str(kubeconfig)))
    await api.open()
    cluster = Cluster(Settings())
    common: dict[str, Any] = {"rng": random.Random(1), "page_size": 50}
    pods = Informer(api, PODS, cluster.pods, skippable=cluster.pods.skippable, **common)
    nodes = Informer(api, NODES, cluster.nodes, **common)
    tasks = [asyncio.create_task(informer.run()) for informer in (pods, nodes)]
    try:
        await eventually(lambda: fake.open_watches == 2)
        yield Watched(fake, cluster, pods)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()
        await fake.stop()


async def test_portless_churn_and_port_changes_keep_the_index_exact(watched: Watched) -> None:
    """Churn of pods without ports moves only the RV; every change that touches ports lands."""
    fake = watched.fake
    for i in range(30):
        put_new(fake, pod(f"web-{i}", node="n2", ports=[port(8080)]))
    for i in range(30):
        fake.put("pods", pod(f"web-{i}", node="n2", ports=[port(8080)], phase="Running"))
    await eventually(watched.in_sync)
    assert len(watched.cluster.pods_by_uid) == 1  # only the ingress pod holds ports
    # A running pod turns hostNetwork (a MODIFIED that adds it), then is deleted.
    uid = fake.get("pods", "default/web-3")["metadata"]["uid"]
    fake.put("pods", pod("web-3", uid=uid, node="n2", ports=[port(9100)], host_network=True))
    await eventually(watched.in_sync)
    assert watched.cluster.holds_pod(uid)
    fake.remove("pods", "default/web-3")
    # A pod that loses its listen annotation, then goes away.
    agent = pod("agent", node="n1", host_network=True, annotations={"hostports.dev/listen": "8125"})
    put_new(fake, agent)
    await eventually(watched.in_sync)
    agent_uid = fake.get("pods", "default/agent")["metadata"]["uid"]
    fake.put("pods", pod("agent", uid=agent_uid, node="n1"))
    fake.remove("pods", "default/agent")
    fake.remove("pods", "default/ingress")  # DELETED of a pod with ports
    await eventually(watched.in_sync)
    assert watched.cluster.pods_by_uid == {}


async def test_a_burst_of_lines_lets_other_tasks_run_between_slices(
    watched: Watched, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 events in one chunk are applied in slices: a request-like task runs in between."""
    monkeypatch.setattr(slices, "SLICE_SECONDS", 0.0)  # every line is a slice of its own
    first_rv = watched.fake.rv + 1
    lines = []
    for i in range(300):
        raw = pod(f"burst-{i}", node="n2", ports=[port(7000 + i, 7000 + i)])
        raw["metadata"]["resourceVersion"] = str(first_rv + i)
        lines.append(orjson.dumps({"type": "ADDED", "object": raw}))
    seen_mid_burst: list[int] = []

    async def request() -> None:
        while not seen_mid_burst:
            applied = len(watched.cluster.pods_by_uid) - 1  # the ingress pod was there
            if 0 < applied < 300:
                seen_mid_burst.append(applied)
            await asyncio.sleep(0)

    probe = asyncio.create_task(request())
    watched.fake.inject_garbage(b"\n".join(lines))  # one write: one chunk on the wire
    await eventually(lambda: len(watched.cluster.pods_by_uid) == 301)
    probe.cancel()
    assert seen_mid_burst, "no other task ran while the burst was applied"


async def test_a_relist_is_applied_in_slices_too(
    watched: Watched, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a 410 the fresh list is applied a slice at a time, and ends equal to the truth."""
    monkeypatch.setattr(slices, "SLICE_SECONDS", 0.0)
    fake = watched.fake
    fake.pause_watches()  # the new pods reach us only through the relist
    for i in range(300):
        put_new(fake, pod(f"listed-{i}", node="n2", ports=[port(7000 + i, 7000 + i)]))
    fake.compact()
    seen_mid_relist: list[int] = []

    async def request() -> None:
        while not seen_mid_relist:
            applied = len(watched.cluster.pods_by_uid) - 1
            if 0 < applied < 300:
                seen_mid_relist.append(applied)
            await asyncio.sleep(0)

    probe = asyncio.create_task(request())
    fake.expire_watches()
    await eventually(lambda: watched.pods.status().relists == 1)
    fake.resume_watches()
    await eventually(watched.in_sync)
    probe.cancel()
    assert seen_mid_relist, "no other task ran while the relist was applied"
