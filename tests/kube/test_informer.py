"""The informer keeps a sink equal to the API server's truth, through every kind of fault.

Real sockets against tests/fakeapi.py, connection from a generated kubeconfig through the
official loader. Backoff sleeps are recorded and shortened so faults cost milliseconds.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from extender.core.cluster import Cluster
from extender.kube.informer import NODES, PODS, Backoff, Informer
from extender.kube.kubeapi import KubeApi
from extender.kube.kubeauth import load_connection
from extender.settings import Settings
from tests.fakeapi import FakeApiServer, RecordingSink, eventually, versions

SELECTOR = PODS.field_selector


def pod(name: str, *, phase: str = "Running", node: str = "n1") -> dict[str, Any]:
    """A pod holding host port 80 on `node`."""
    return {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}]}],
        },
        "status": {"phase": phase},
    }


@dataclass
class Stack:
    """A fake API server with pods/nodes informers running against it."""

    fake: FakeApiServer
    kubeconfig: Path
    pods: RecordingSink
    nodes: RecordingSink
    pod_informer: Informer
    node_informer: Informer
    delays: list[float] = field(default_factory=list)

    def in_sync(self) -> bool:
        """Both sinks equal a fresh consistent list."""
        return self.pods.versions() == versions(
            self.fake.truth("pods", SELECTOR)
        ) and self.nodes.versions() == versions(self.fake.truth("nodes"))


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """Seed the fake, start both informers, wait for the first sync."""
    fake = FakeApiServer(token="token-1")
    for i in range(7):
        fake.put("pods", pod(f"p{i}", node=f"n{i % 3}"))
    fake.put("pods", pod("finished", phase="Succeeded"))
    for i in range(3):
        fake.put("nodes", {"metadata": {"name": f"n{i}"}})
    await fake.start()
    kubeconfig = fake.write_kubeconfig(tmp_path / "config", token="token-1")
    api = KubeApi(load_connection(str(kubeconfig)))
    await api.open()
    delays: list[float] = []

    async def quick_sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0.01)

    pods, nodes = RecordingSink(), RecordingSink()
    common: dict[str, Any] = {"sleep": quick_sleep, "rng": random.Random(7), "page_size": 3}
    pod_informer = Informer(api, PODS, pods, **common)
    node_informer = Informer(api, NODES, nodes, **common)
    tasks = [asyncio.create_task(i.run()) for i in (pod_informer, node_informer)]
    stack = Stack(fake, kubeconfig, pods, nodes, pod_informer, node_informer, delays)
    try:
        await eventually(lambda: fake.open_watches == 2)
        yield stack
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()
        await fake.stop()


async def test_initial_sync_equals_the_truth(stack: Stack) -> None:
    """After the first paginated list the sinks hold exactly the live objects."""
    assert stack.in_sync()
    assert "default/finished" not in stack.pods.objects
    assert len(stack.pods.objects) == 7
    status = stack.pod_informer.status()
    assert status.synced
    assert status.relists == 0
    list_requests = [
        r for r in stack.fake.requests if r.path == "/api/v1/pods" and "limit" in r.query
    ]
    assert len(list_requests) == 3  # 7 pods in pages of 3
    watch = next(
        r for r in stack.fake.requests if r.query.get("watch") == "1" and r.path == PODS.path
    )
    assert watch.query["allowWatchBookmarks"] == "true"
    assert watch.query["fieldSelector"] == SELECTOR
    assert 300 <= int(watch.query["timeoutSeconds"]) < 600


async def test_watch_events_keep_the_sink_current(stack: Stack) -> None:
    """Adds, updates, deletes and a pod finishing all reach the sink."""
    fake = stack.fake
    fake.put("pods", pod("new"))
    fake.put("pods", pod("p1", node="n2"))
    fake.remove("pods", "default/p2")
    fake.put("pods", pod("p3", phase="Failed"))
    fake.put("nodes", {"metadata": {"name": "n9"}})
    await eventually(stack.in_sync)
    assert "default/p3" not in stack.pods.objects
    assert stack.pods.objects["default/p1"]["spec"]["nodeName"] == "n2"


async def test_bookmark_moves_only_the_resource_version(stack: Stack) -> None:
    """A BOOKMARK changes the informer's RV and nothing in the sink."""
    before = dict(stack.nodes.objects)
    stack.fake.put("pods", pod("elsewhere"))  # moves the global RV without touching nodes
    stack.fake.send_bookmark()
    await eventually(lambda: stack.node_informer.status().resource_version == str(stack.fake.rv))
    assert stack.nodes.objects == before


async def test_disconnect_mid_stream_resumes_without_relist(stack: Stack) -> None:
    """An abrupt cut (half a line on the wire) resumes the watch from the last RV."""
    stack.fake.break_streams(partial_line=b'{"type":"MODIFIED","obj')
    stack.fake.put("pods", pod("after-cut"))
    stack.fake.remove("pods", "default/p0")
    await eventually(stack.in_sync)
    await eventually(lambda: stack.fake.open_watches == 2)
    status = stack.pod_informer.status()
    assert status.relists == 0
    assert status.watch_restarts >= 1
    assert stack.pods.replaces == 1


@pytest.mark.parametrize("style", ["event", "status"])
async def test_410_on_rewatch_relists_and_drops_vanished_pods(stack: Stack, style: str) -> None:
    """History lost while away: the 410 (ERROR event or HTTP status) relists and diffs."""
    fake = stack.fake
    fake.expired_watch_as = style
    await fake.go_down()
    fake.remove("pods", "default/p4")
    fake.put("pods", pod("while-away"))
    fake.compact()
    await fake.come_up()
    await eventually(stack.in_sync)
    assert "default/p4" not in stack.pods.objects
    assert stack.pod_informer.status().relists == 1
    assert stack.pods.replaces == 2


async def test_410_error_event_mid_stream_relists(stack: Stack) -> None:
    """An ERROR 410 inside an open watch (the cacher's form) makes the informer relist."""
    stack.fake.expire_watches()
    stack.fake.put("pods", pod("later"))
    await eventually(lambda: stack.pod_informer.status().relists == 1)
    await eventually(stack.in_sync)


async def test_410_right_after_a_relist_relists_again_without_a_backoff(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """Each relist is outdated before its watch starts (410 again): relist at once, no sleep."""
    fake = stack.fake
    spoiled_pages = 0

    def churn_and_compact(kind: str) -> None:
        nonlocal spoiled_pages
        if kind == "pods" and spoiled_pages < 6:  # two relists of three pages
            spoiled_pages += 1
            fake.put("pods", pod("churn"))
            fake.compact()

    fake.after_list_page = churn_and_compact
    fake.expire_watches()
    await eventually(lambda: stack.pod_informer.status().relists == 3)
    await eventually(stack.in_sync)
    # (The nodes informer sees every compaction too, and may reach the MAX_GONE_IN_A_ROW guard.)
    assert [
        r.message
        for r in caplog.records
        if r.message.startswith("pods: ") and "retrying" in r.message
    ] == []


async def test_expired_continue_token_restarts_the_list(stack: Stack) -> None:
    """A 410 on a continue token restarts the list from scratch, not from the stale token."""
    fake = stack.fake
    pages = 0

    def expire_after_first_page(kind: str) -> None:
        nonlocal pages
        pages += kind == "pods"
        if kind == "pods" and pages == 1:
            fake.expire_continue_tokens()
            fake.remove("pods", "default/p5")

    fake.after_list_page = expire_after_first_page
    fake.break_streams()
    fake.put("pods", pod("trigger"))  # queued behind the cut: only a relist can see it
    fake.compact()
    await eventually(lambda: stack.pod_informer.status().relists >= 1)
    await eventually(stack.in_sync)
    assert "default/p5" not in stack.pods.objects
    assert "default/trigger" in stack.pods.objects
    assert pages >= 2  # the expired token was not followed: the list started over
    assert stack.pods.replaces == 2  # the half-read list never reached the sink


async def test_server_down_for_a_while_backs_off_and_converges(stack: Stack) -> None:
    """Refused connections back off (doubling) and the watch resumes from its RV when back."""
    fake = stack.fake
    await fake.go_down()
    await eventually(lambda: len(stack.delays) >= 4)
    assert stack.pod_informer.status().broken_since is not None
    fake.put("pods", pod("during-outage"))
    fake.remove("pods", "default/p6")
    await fake.come_up()
    await eventually(stack.in_sync)
    await eventually(lambda: stack.pod_informer.status().broken_since is None)
    assert stack.pod_informer.status().relists == 0
    per_informer = stack.delays[::2]
    assert per_informer[1] > per_informer[0]


async def test_garbage_line_restarts_the_watch(stack: Stack) -> None:
    """A line that is not a watch event ends that watch; the next one resumes from the RV."""
    stack.fake.inject_garbage(b"<html>502 Bad Gateway</html>")
    stack.fake.put("pods", pod("after-garbage"))
    await eventually(stack.in_sync)
    assert "not a watch event" in (stack.pod_informer.status().last_error or "")
    assert stack.pod_informer.status().relists == 0


async def test_rotated_token_is_reloaded_on_401(stack: Stack) -> None:
    """The server rotates the token and the kubeconfig is rewritten: no restart needed."""
    fake = stack.fake
    fake.rotate_token("token-2")
    fake.write_kubeconfig(stack.kubeconfig, token="token-2")
    fake.break_streams()
    fake.put("pods", pod("after-rotation"))
    await eventually(stack.in_sync)
    assert fake.requests[-1].authorization == "Bearer token-2"
    assert any(r.authorization == "Bearer token-1" for r in fake.requests[-4:])  # the 401


async def test_429_waits_at_least_retry_after(stack: Stack) -> None:
    """A 429 on re-watch is retried after max(backoff, Retry-After) and then converges."""
    stack.fake.inject_error(429, watch=True, retry_after=2)
    stack.fake.break_streams()
    stack.fake.put("pods", pod("after-429"))
    await eventually(stack.in_sync)
    assert any(delay >= 2 for delay in stack.delays)


def test_backoff_doubles_to_the_cap_with_bounded_jitter() -> None:
    """0.8 s doubling to 30 s, each stretched by at most 25 %; reset starts over."""
    backoff = Backoff(random.Random(1))
    delays = [backoff.next() for _ in range(9)]
    bases = [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0, 30.0]
    assert all(b <= d <= b * 1.25 for b, d in zip(bases, delays, strict=True))
    backoff.reset()
    assert 0.8 <= backoff.next() <= 1.0


class PickySink(RecordingSink):
    """A sink whose decoder chokes on one object, as a bug in it would."""

    def upsert(self, raw: dict[str, Any]) -> None:
        if raw["metadata"]["name"] == "poison":
            raise ValueError("cannot decode")
        super().upsert(raw)


async def test_a_sink_error_skips_one_object_not_the_stream(stack: Stack) -> None:
    """An object the sink rejects is counted and logged; later events still arrive."""
    sink = PickySink()
    api = KubeApi(load_connection(str(stack.kubeconfig)))
    async with api:
        informer = Informer(api, PODS, sink)
        task = asyncio.create_task(informer.run())
        try:
            await eventually(lambda: informer.status().synced)
            stack.fake.put("pods", pod("poison"))
            stack.fake.put("pods", pod("after-poison"))
            await eventually(lambda: "default/after-poison" in sink.objects)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert informer.status().sink_errors == 1
    assert "default/poison" not in sink.objects


class PickyPodIndex:
    """A cluster's pod sink (a SteppedSink) whose decoder chokes on one listed pod."""

    def __init__(self) -> None:
        self.cluster = Cluster(Settings())

    def compact(self, raw: dict[str, Any]) -> Any:
        if raw["metadata"]["name"] == "poison":
            raise ValueError("cannot decode")
        return self.cluster.pods.compact(raw)

    def replace_in_steps(self, listed: list[Any]) -> Iterator[None]:
        return self.cluster.pods.replace_in_steps(listed)

    def upsert(self, raw: dict[str, Any]) -> None:
        self.cluster.pods.upsert(raw)

    def delete(self, raw: dict[str, Any]) -> None:
        self.cluster.pods.delete(raw)

    def replace(self, raws: list[dict[str, Any]]) -> None:
        raise AssertionError("a stepped sink is listed in steps")


async def test_a_listed_object_the_sink_rejects_leaves_out_only_that_object(
    stack: Stack,
) -> None:
    """A pod whose decoding fails during the (paged) list is counted and logged; the pods on
    the pages before and after it reach the index, and the informer is synced."""
    for name in ("before", "poison", "after"):
        stack.fake.put("pods", pod(name))
    sink = PickyPodIndex()
    api = KubeApi(load_connection(str(stack.kubeconfig)))
    async with api:
        informer = Informer(api, PODS, sink, page_size=1)
        task = asyncio.create_task(informer.run())
        try:
            await eventually(lambda: informer.status().synced)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert informer.status().sink_errors == 1
    held = {record.name for record in sink.cluster.pods_by_uid.values()}
    assert held == {"before", "after"} | {f"p{i}" for i in range(7)}


async def test_backoff_starts_over_once_events_flow_again(stack: Stack) -> None:
    """After an outage escalated the backoff, the next cut waits 0.8-1.0 s again."""
    fake = stack.fake
    await fake.go_down()
    await eventually(lambda: len(stack.delays) >= 6)
    assert max(stack.delays) > 2.0
    await fake.come_up()
    fake.put("pods", pod("flowing"))
    fake.put("nodes", {"metadata": {"name": "n7"}})
    await eventually(stack.in_sync)
    await eventually(lambda: fake.open_watches == 2)
    before = len(stack.delays)
    fake.break_streams()
    await eventually(lambda: len(stack.delays) >= before + 2)
    assert all(0.8 <= delay <= 1.0 for delay in stack.delays[before:])


async def test_watches_that_hang_up_at_once_stay_broken(stack: Stack) -> None:
    """A proxy that accepts every watch and drops it before any event does not reset the break
    (readiness can go stale); once watches hold again the informer follows and recovers."""
    stack.fake.hang_up_watches(10_000)
    stack.fake.break_streams()
    await eventually(lambda: len(stack.delays) >= 6)
    first = stack.pod_informer.status().broken_since
    assert first is not None
    await eventually(lambda: len(stack.delays) >= 12)
    assert stack.pod_informer.status().broken_since == first
    stack.fake.hang_up_watches(0)
    stack.fake.put("pods", pod("after-the-flapping"))
    await eventually(stack.in_sync)
    await eventually(lambda: stack.pod_informer.status().broken_since is None)
