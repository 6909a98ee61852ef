"""Live mode end to end: fake API server over TLS, the official kubeconfig loader, the real app."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from extender.core.cluster import Cluster
from extender.kube.informer import HEALTHY_WATCH_SECONDS
from extender.kube.kubeauth import load_connection
from extender.server.app import create_app
from extender.server.live import Live, create_live_app
from extender.server.metrics import new_metrics
from extender.settings import Settings, SettingsError
from tests.conftest import REPO, ExtenderClient
from tests.fakeapi import FakeApiServer, Pki, eventually
from tests.objects import pod, port
from tests.truth import fresh_cluster

STALENESS = 60.0


class ManualClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class LiveStack:
    """A running extender in live mode against a fake API server."""

    fake: FakeApiServer
    cluster: Cluster
    live: Live
    client: ExtenderClient
    clock: ManualClock
    settings: Settings

    def fresh_fingerprint(self) -> frozenset[Any]:
        """The index a brand-new extender would build from a consistent list right now."""
        return fresh_cluster(self.fake, self.settings).index.fingerprint()

    def in_sync(self) -> bool:
        return self.cluster.index.fingerprint() == self.fresh_fingerprint()

    async def post(self, verb: str, body: Any) -> dict[str, Any]:
        response = await self.client.post(f"/{verb}", data=orjson.dumps(body))
        assert response.status == 200
        decoded: dict[str, Any] = orjson.loads(await response.read())
        return decoded

    async def readyz(self) -> tuple[int, str]:
        response = await self.client.get("/readyz")
        return response.status, await response.text()


def seed(fake: FakeApiServer) -> None:
    """Three nodes; an ingress pod with hostPort 80 on n1; a hostNetwork agent on n2."""
    for name in ("n1", "n2", "n3"):
        fake.put("nodes", {"metadata": {"name": name}})
    for raw in (
        pod("ingress", node="n1", ports=[port(80, 80)]),
        pod("agent", node="n2", ports=[port(2703)], host_network=True),
        pod("plain", node="n3"),
        pod("done", node="n3", ports=[port(9100, 9100)], phase="Succeeded"),
    ):
        del raw["metadata"]["uid"]  # the API server assigns UIDs
        fake.put("pods", raw)


@contextlib.asynccontextmanager
async def start_stack(
    tmp_path: Path, aiohttp_client: Any, *, fail_open: bool = False, api_down: bool = False
) -> AsyncIterator[LiveStack]:
    """Start fake + extender; yields once the app is serving (not necessarily synced)."""
    fake = FakeApiServer(token="sa-token", pki=Pki.create(tmp_path / "pki"))
    seed(fake)
    await fake.start()
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", token="sa-token")
    if api_down:
        await fake.go_down()  # the port stays known: `come_up` listens on it again
    settings = Settings(fail_open=fail_open, staleness_seconds=STALENESS)
    cluster = Cluster(settings)
    clock = ManualClock()

    async def quick_sleep(delay: float) -> None:
        await asyncio.sleep(0.01)

    live = Live(
        load_connection(str(kubeconfig)),
        cluster,
        staleness_seconds=STALENESS,
        page_size=2,
        clock=clock,
        sleep=quick_sleep,
        rng=random.Random(3),
    )
    app = create_app(cluster, settings, binder=live.binder, readiness=live.readiness)
    app.cleanup_ctx.append(live.run_informers)
    client: ExtenderClient = await aiohttp_client(app)
    try:
        yield LiveStack(fake, cluster, live, client, clock, settings)
    finally:
        await client.close()
        await fake.stop()


@pytest.fixture
async def stack(tmp_path: Path, aiohttp_client: Any) -> AsyncIterator[LiveStack]:
    """A synced live extender (fail closed)."""
    async with start_stack(tmp_path, aiohttp_client) as running:
        await eventually(lambda: running.live.readiness.check() is None)
        await eventually(lambda: running.fake.open_watches == 2)
        yield running


def filter_args(raw_pod: dict[str, Any], nodes: list[str]) -> dict[str, Any]:
    """ExtenderArgs as a nodeCacheCapable scheduler sends them."""
    return {"Pod": raw_pod, "Nodes": None, "NodeNames": nodes}


def newcomer(name: str = "newcomer") -> dict[str, Any]:
    """A pending pod that wants hostPort 80."""
    raw = pod(name, ports=[port(80, 80)])
    del raw["metadata"]["uid"]
    return raw


async def test_index_equals_the_truth_after_sync_and_after_faults(stack: LiveStack) -> None:
    """The live index equals one built from a fresh list: after sync, churn, a cut and a 410."""
    assert stack.in_sync()
    assert ("n1", "TCP", 80) in {(c[1], c[2], c[3]) for c in stack.cluster.index.fingerprint()}
    fake = stack.fake
    fake.put("pods", pod("metrics", node="n3", ports=[port(9100, 9100)]))
    fake.put("pods", pod("ingress", node="n1", ports=[port(80, 80)], phase="Failed"))
    await eventually(stack.in_sync)
    fake.break_streams(partial_line=b'{"type":')
    fake.remove("pods", "default/metrics")
    await eventually(stack.in_sync)
    fake.put("pods", pod("web", node="n2", ports=[port(8080, 8080)]))
    await eventually(stack.in_sync)
    await fake.go_down()
    fake.put("pods", pod("dns", node="n2", ports=[port(53, 53, "UDP")]))
    fake.put("pods", pod("web", node="n2"))  # its port gone: the relist does not even decode it
    fake.remove("nodes", "n3")
    fake.compact()
    await fake.come_up()
    await eventually(stack.in_sync)
    assert stack.live.pods.status().relists == 1
    assert 8080 not in {claim[3] for claim in stack.cluster.index.fingerprint()}


async def test_readiness_flips_with_sync_and_staleness(tmp_path: Path, aiohttp_client: Any) -> None:
    """Not ready before sync (filter answers Error), ready after, not ready when stale."""
    async with start_stack(tmp_path, aiohttp_client, api_down=True) as running:
        fake = running.fake
        await eventually(lambda: running.live.pods.status().last_error is not None)
        status, text = await running.readyz()
        assert status == 503
        assert "informer not synced yet" in text
        answer = await running.post("filter", filter_args(newcomer(), ["n1", "n2"]))
        assert answer["Error"].startswith("hostport-extender not ready: ")
        assert answer["NodeNames"] == []
        assert (await running.client.get("/healthz")).status == 200

        await fake.come_up()
        await eventually(lambda: running.live.readiness.check() is None)
        assert (await running.readyz())[0] == 200

        await fake.go_down()
        await eventually(lambda: running.live.pods.status().broken_since is not None)
        assert (await running.readyz())[0] == 200  # a short outage is tolerated
        running.clock.now += STALENESS + 1
        status, text = await running.readyz()
        assert status == 503
        assert "watch broken for 61 s (staleness bound 60 s)" in text
        answer = await running.post("filter", filter_args(newcomer(), ["n1", "n2"]))
        assert "not ready" in answer["Error"]

        await fake.come_up()
        # The probe answers after a silence past the bound: the watches are restarted, and a
        # reopened watch with nothing to say counts as following once it has held a while.
        await eventually(lambda: running.live.probe.status().resync_after is not None)

        def ready_as_time_passes() -> bool:
            running.clock.now += HEALTHY_WATCH_SECONDS / 100
            return running.live.readiness.check() is None

        await eventually(ready_as_time_passes)


async def test_fail_open_passes_every_node_when_stale(tmp_path: Path, aiohttp_client: Any) -> None:
    """With --fail-open a stale extender lets the scheduler decide alone."""
    async with start_stack(tmp_path, aiohttp_client, fail_open=True) as running:
        await eventually(lambda: running.live.readiness.check() is None)
        await running.fake.go_down()
        await eventually(lambda: running.live.pods.status().broken_since is not None)
        running.clock.now += STALENESS + 1
        answer = await running.post("filter", filter_args(newcomer(), ["n1", "n2"]))
        assert answer["Error"] == ""
        assert answer["NodeNames"] == ["n1", "n2"]


async def test_bind_creates_the_binding_and_the_watch_clears_the_reservation(
    stack: LiveStack,
) -> None:
    """bind POSTs the Binding; the port stays reserved until the watch shows the pod there."""
    fake = stack.fake
    stored = fake.put("pods", newcomer())
    uid = stored["metadata"]["uid"]
    await eventually(lambda: stack.cluster.pods_by_uid.get(uid) is not None)
    answer = await stack.post("filter", filter_args(stored, ["n1", "n2", "n3"]))
    assert answer["NodeNames"] == ["n2", "n3"]
    assert "n1" in answer["FailedAndUnresolvableNodes"]

    fake.pause_watches()
    bind = {"PodName": "newcomer", "PodNamespace": "default", "PodUID": uid, "Node": "n3"}
    assert await stack.post("bind", bind) == {"Error": ""}
    assert fake.get("pods", "default/newcomer")["spec"]["nodeName"] == "n3"
    assert stack.cluster.bound_reservations() == 1
    rival = newcomer("rival")
    answer = await stack.post("filter", filter_args(rival, ["n2", "n3"]))
    assert answer["NodeNames"] == ["n2"]  # n3 is held by the reservation

    fake.resume_watches()
    await eventually(lambda: stack.cluster.bound_reservations() == 0)
    held = stack.cluster.index.claims_of(uid)
    assert held is not None
    assert held[0] == "n3"
    assert stack.in_sync()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("already-bound", 'already assigned to node "n1"'),
        ("missing", 'pods "ghost" not found'),
        ("uid-mismatch", "Precondition failed"),
        ("server-down", "cannot connect to 127.0.0.1:"),
    ],
)
async def test_failed_bind_reports_the_api_error_and_drops_the_reservation(
    stack: LiveStack, case: str, expected: str
) -> None:
    """409 (already bound, UID mismatch), 404 and an unreachable server come back as Error."""
    fake = stack.fake
    ingress = fake.get("pods", "default/ingress")
    name, uid = "ingress", ingress["metadata"]["uid"]
    if case == "missing":
        name = "ghost"
    elif case == "uid-mismatch":
        stored = fake.put("pods", newcomer())
        name, uid = "newcomer", stored["metadata"]["uid"] + "-old"
    elif case == "server-down":
        await fake.go_down()
    bind = {"PodName": name, "PodNamespace": "default", "PodUID": uid, "Node": "n3"}
    answer = await stack.post("bind", bind)
    assert expected in answer["Error"]
    assert answer["Error"].startswith(f"binding pod default/{name} to node n3: ")
    assert stack.cluster.bound_reservations() == 0
    binding_posts = [r for r in fake.requests if r.path.endswith("/binding")]
    assert len(binding_posts) == (0 if case == "server-down" else 1)  # never retried


async def test_serve_without_snapshot_runs_live(tmp_path: Path) -> None:
    """`hostport-extender serve --kubeconfig FILE` syncs from the cluster and becomes ready."""
    fake = FakeApiServer(token="sa-token", pki=Pki.create(tmp_path / "pki"))
    seed(fake)
    await fake.start()
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", token="sa-token")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "extender", "serve", "--kubeconfig", str(kubeconfig),
        "--listen", "127.0.0.1:0", "--staleness-seconds", "30",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        banner = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        assert f"serving the cluster at {fake.url} (kubeconfig {kubeconfig})" in banner
        base = banner.rsplit(" on ", 1)[1].strip()
        async with aiohttp.ClientSession() as http:
            for _ in range(1000):
                async with http.get(base + "/readyz") as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.01)
            assert response.status == 200
        await eventually(lambda: fake.open_watches == 2)
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) == 0
        await fake.stop()


async def test_serve_with_a_bad_kubeconfig_is_one_line(tmp_path: Path) -> None:
    """A missing kubeconfig is a one-line error and exit code 2, not a traceback."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "extender", "serve", "--kubeconfig", str(tmp_path / "nope"),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    text = err.decode()
    assert "Traceback" not in text
    assert f"kubeconfig {tmp_path / 'nope'}" in text


async def test_live_app_exports_informer_metrics(tmp_path: Path, aiohttp_client: Any) -> None:
    """create_live_app feeds list and watch progress into /metrics."""
    fake = FakeApiServer(token="sa-token", pki=Pki.create(tmp_path / "pki"))
    seed(fake)
    await fake.start()
    try:
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", token="sa-token")
        metrics = new_metrics()
        app, readiness, where = create_live_app(
            Settings(), kubeconfig=str(kubeconfig), context=None, metrics=metrics
        )
        assert where.startswith(f"the cluster at {fake.url} ")
        client: ExtenderClient = await aiohttp_client(app)
        await eventually(lambda: readiness.check() is None)
        await eventually(lambda: fake.open_watches == 2)
        fake.put("nodes", {"metadata": {"name": "n9"}})
        fake.break_streams()
        restarts = {"resource": "nodes"}
        name = "hostport_extender_informer_watch_restarts_total"
        await eventually(lambda: metrics.registry.get_sample_value(name, restarts) == 1.0)
        text = await (await client.get("/metrics")).text()
        assert 'hostport_extender_informer_relists_total{resource="pods"} 1.0' in text
        assert 'hostport_extender_informer_watch_restarts_total{resource="nodes"} 1.0' in text
        assert 'hostport_extender_informer_last_event_age_seconds{resource="nodes"}' in text
        await client.close()
    finally:
        await fake.stop()


async def test_live_app_exports_how_long_the_api_server_has_been_silent(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    """/metrics shows the seconds since the API server last answered the probe: near zero while
    it answers, growing while it stalls, near zero again once it answers."""
    fake = FakeApiServer(token="sa-token", pki=Pki.create(tmp_path / "pki"))
    seed(fake)
    await fake.start()
    name = "hostport_extender_api_server_last_answer_age_seconds"
    try:
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", token="sa-token")
        metrics = new_metrics()
        settings = Settings(staleness_seconds=2.0)  # the probe runs every 0.5 s
        app, readiness, _ = create_live_app(
            settings, kubeconfig=str(kubeconfig), context=None, metrics=metrics
        )
        client: ExtenderClient = await aiohttp_client(app)
        await eventually(lambda: readiness.check() is None)

        def age() -> float:
            value = metrics.registry.get_sample_value(name)
            assert value is not None
            return value

        await eventually(lambda: age() < 1.0)
        fake.stall()
        await eventually(lambda: age() > 2.0, within=10)
        fake.resume()
        await eventually(lambda: age() < 1.0, within=10)
        assert name in await (await client.get("/metrics")).text()
        await client.close()
    finally:
        fake.resume()
        await fake.stop()


@pytest.mark.parametrize(("api_compression", "asked"), [(False, "identity"), (True, "gzip")])
async def test_live_mode_asks_for_compressed_lists_only_when_told(
    tmp_path: Path, aiohttp_client: Any, api_compression: bool, asked: str
) -> None:
    """By default the informers ask for lists as they are (the API server spends no CPU
    gzipping a relist, nor we inflating it); `api_compression: true` asks for gzip, and a list
    over the API server's threshold then arrives gzipped and syncs all the same."""
    fake = FakeApiServer(token="sa-token")
    seed(fake)
    for index in range(600):  # ~250 KB of pods: a list the API server would compress
        raw = pod(f"web-{index}", node="n1", ports=[port(8000 + index, 8000 + index)])
        del raw["metadata"]["uid"]
        fake.put("pods", raw)
    await fake.start()
    try:
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", token="sa-token")
        settings = Settings(api_compression=api_compression)
        app, readiness, _ = create_live_app(settings, kubeconfig=str(kubeconfig), context=None)
        client: ExtenderClient = await aiohttp_client(app)
        await eventually(lambda: readiness.check() is None)
        lists = [r for r in fake.requests if "watch" not in r.query and r.path.endswith("/pods")]
        assert lists
        assert {r.accept_encoding for r in lists} == {asked}
        assert (fake.gzipped_answers > 0) is api_compression
        body = filter_args(pod("x", ports=[port(8599, 8599)]), ["n1", "n2"])
        response = await client.post("/filter", data=orjson.dumps(body))
        answer = await response.json()
        assert answer["NodeNames"] == ["n2"]  # a pod of the big list holds 8599 on n1
        await client.close()
    finally:
        await fake.stop()


def test_api_compression_is_a_boolean_setting() -> None:
    with pytest.raises(SettingsError, match="api_compression must be true or false, got 'yes'"):
        Settings(api_compression="yes")  # type: ignore[arg-type]
