"""Live mode under what a real API server does: stalls, credential rotation, 410 after 401s,
a frozen extender. Each test runs the real app, informers and probe against the fake API server
on the real clock, and checks what the scheduler would see: /readyz and the index."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from extender.core.cluster import Cluster
from extender.kube.informer import HEALTHY_WATCH_SECONDS, PODS
from extender.kube.kubeauth import load_connection
from extender.kube.probe import FAILING_PROBE_INTERVAL
from extender.server.app import create_app
from extender.server.live import Live
from extender.settings import Settings
from extender.webhook import certs
from tests.conftest import REPO, ExtenderClient
from tests.fakeapi import FakeApiServer, Pki, eventually
from tests.kube.test_live import newcomer, seed
from tests.objects import pod, port
from tests.truth import Sleeper, matches_truth

STALENESS = 1.5
SLACK = 1.0
"""Scheduling noise allowed on a shared 2-core machine on top of each bound."""


@dataclass
class Running:
    """A live extender on the real clock against a fake API server."""

    fake: FakeApiServer
    cluster: Cluster
    live: Live
    client: ExtenderClient
    settings: Settings
    sleeper: Sleeper
    kubeconfig: Path

    def in_sync(self) -> bool:
        """The index equals one a brand-new extender would build from a fresh list now."""
        return matches_truth(self.cluster, self.fake, self.settings)

    def ready(self) -> bool:
        return self.live.readiness.check() is None

    async def readyz(self) -> tuple[int, str]:
        response = await self.client.get("/readyz")
        return response.status, await response.text()


@contextlib.asynccontextmanager
async def running_live(
    tmp_path: Path, aiohttp_client: Any, *, client_cert: bool = False, watch_timeout: int = 300
) -> AsyncIterator[Running]:
    """Fake API server over TLS + the live app; yields once synced, ready and watching."""
    pki = Pki.create(tmp_path / "pki")
    fake = FakeApiServer(token="sa-token", pki=pki)
    seed(fake)
    await fake.start()
    kubeconfig = tmp_path / "kubeconfig"
    if client_cert:
        fake.write_kubeconfig(kubeconfig, client_cert=pki.issue_client("scheduler"))
    else:
        fake.write_kubeconfig(kubeconfig, token="sa-token")
    settings = Settings(staleness_seconds=STALENESS)
    cluster = Cluster(settings)
    sleeper = Sleeper()
    live = Live(
        load_connection(str(kubeconfig)),
        cluster,
        staleness_seconds=STALENESS,
        watch_timeout=watch_timeout,
        sleep=sleeper,
        rng=random.Random(5),
    )
    app = create_app(cluster, settings, binder=live.binder, readiness=live.readiness)
    app.cleanup_ctx.append(live.run_informers)
    client: ExtenderClient = await aiohttp_client(app)
    stack = Running(fake, cluster, live, client, settings, sleeper, kubeconfig)
    try:
        await eventually(stack.ready)
        await eventually(lambda: fake.open_watches == 2)
        yield stack
    finally:
        await client.close()
        await fake.stop()


async def first_ready(stack: Running, *, within: float) -> float:
    """Seconds until readiness says ready; at that moment the index must equal the truth."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await eventually(stack.ready, within=within)
    took = loop.time() - started
    assert stack.in_sync(), "ready was reported before the index caught up"
    return took


async def test_a_stalled_api_server_is_not_ready_within_the_bound_and_ready_once_it_answers(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    """Connections open, nothing flows: 503 within the staleness bound, 200 (current) after."""
    async with running_live(tmp_path, aiohttp_client) as stack:
        loop = asyncio.get_running_loop()
        stalled_at = loop.time()
        stack.fake.stall(partial_line=b'{"type":"MODIF')
        stack.fake.remove("pods", "default/ingress")  # news the silent watch does not bring
        await eventually(lambda: not stack.ready(), within=STALENESS + 5)
        assert loop.time() - stalled_at <= STALENESS + SLACK
        status, text = await stack.readyz()
        assert status == 503
        assert "the API server has not answered for 2 s (staleness bound 1.5 s)" in text
        assert not stack.in_sync()  # what the scheduler would have been served as current

        await asyncio.sleep(STALENESS)
        stack.fake.resume()
        took = await first_ready(stack, within=10)
        assert took <= HEALTHY_WATCH_SECONDS + SLACK
        assert (await stack.readyz())[0] == 200


async def test_a_watch_wedged_past_its_timeout_is_restarted(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    """A watch the server neither feeds nor ends (the server itself answers) is reopened."""
    async with running_live(tmp_path, aiohttp_client, watch_timeout=1) as stack:
        stack.fake.stall(requests=False)  # the open watches freeze; new requests are served
        stack.fake.remove("pods", "default/ingress")
        # The server promised to end each watch within 2 s (timeoutSeconds 1-2); 2 s of grace.
        await eventually(stack.in_sync, within=4 + 2 * SLACK)
        assert stack.ready()


@pytest.mark.parametrize("how", ["files-in-place", "kubeconfig-rewritten"])
async def test_a_rotated_client_certificate_is_picked_up_by_the_running_informers(
    tmp_path: Path, aiohttp_client: Any, how: str
) -> None:
    """The server trusts only a new client CA: 503 with the 401, ready and current once the new
    certificate is on disk, without a restart."""
    async with running_live(tmp_path, aiohttp_client, client_cert=True) as stack:
        fake, pki = stack.fake, stack.fake.pki
        assert pki is not None
        new_ca = certs.new_authority("fake-client-ca-2", days=2)
        fake.trust_client_ca(new_ca)
        fake.break_streams()  # the API server restarted with the new --client-ca-file
        fake.remove("pods", "default/ingress")
        await eventually(lambda: not stack.ready(), within=STALENESS + 5)
        status, text = await stack.readyz()
        assert status == 503
        assert "401 Unauthorized" in text

        if how == "files-in-place":
            pki.issue_client("scheduler", authority=new_ca)
        else:
            new_pair = pki.issue_client("scheduler", authority=new_ca, name="scheduler-2")
            fake.write_kubeconfig(stack.kubeconfig, client_cert=new_pair)
        # At most 1 s until the files are checked, 0.5 s until the next probe, 1 s for the
        # restarted watches to show they are live.
        took = await first_ready(stack, within=15)
        assert took <= 2.5 + HEALTHY_WATCH_SECONDS + SLACK


async def test_after_401s_a_410_relists_at_once_and_is_ready_within_a_second(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    """401 x N pile the backoff up to 30 s; once accepted: 410, one fresh relist, ready fast."""
    async with running_live(tmp_path, aiohttp_client) as stack:
        fake, sleeper = stack.fake, stack.sleeper
        sleeper.fast = True
        fake.rotate_token("sa-token-2")  # the kubeconfig's token is refused, reloaded or not
        fake.break_streams()
        await eventually(lambda: sum(delay >= 30 for delay in sleeper.delays) >= 2)
        fake.remove("pods", "default/ingress")
        fake.compact()  # the watches' resourceVersion is gone: the way back is a 410
        sleeper.fast = False
        waits = len(sleeper.delays)
        await eventually(lambda: len(sleeper.delays) >= waits + 2)  # both in a 30 s sleep
        await eventually(lambda: not stack.ready())
        assert "401 Unauthorized" in (await stack.readyz())[1]

        accepted_at = len(fake.requests)
        sleeps_before = len(sleeper.delays)
        fake.rotate_token("sa-token")
        took = await first_ready(stack, within=15)
        assert took <= FAILING_PROBE_INTERVAL + SLACK
        assert sleeper.delays[sleeps_before:] == []  # no backoff on the way back
        lists = [
            r for r in fake.requests[accepted_at:] if r.path == PODS.path and "watch" not in r.query
        ]
        assert [r.query.get("resourceVersion") for r in lists] == [None]  # fresh, consistent
        assert stack.live.pods.status().relists == 1


async def test_after_a_freeze_of_the_extender_ready_waits_for_live_watches(
    tmp_path: Path,
) -> None:
    """SIGSTOP the extender past the bound while pods change and the API server restarts:
    after SIGCONT, /readyz is 503 while the server is still down, and its first 200 comes with
    the index current."""
    fake = FakeApiServer(token="sa-token", pki=Pki.create(tmp_path / "pki"))
    seed(fake)
    await fake.start()
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", token="sa-token")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "extender", "serve", "--kubeconfig", str(kubeconfig),
        "--listen", "127.0.0.1:0", "--staleness-seconds", str(STALENESS),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    wants_80 = {"Pod": newcomer(), "Nodes": None, "NodeNames": ["n1", "n2", "n3"]}
    try:
        assert process.stdout is not None
        banner = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        base = banner.rsplit(" on ", 1)[1].strip()
        async with aiohttp.ClientSession() as http:

            async def readyz() -> int:
                async with http.get(base + "/readyz") as response:
                    return response.status

            async def fits_port_80() -> list[str]:
                async with http.post(base + "/filter", data=orjson.dumps(wants_80)) as response:
                    names: list[str] = orjson.loads(await response.read())["NodeNames"]
                    return names

            for _ in range(3000):
                if await readyz() == 200:
                    break
                await asyncio.sleep(0.01)
            assert await fits_port_80() == ["n2", "n3"]  # the ingress pod holds 80 on n1

            process.send_signal(signal.SIGSTOP)
            fake.remove("pods", "default/ingress")
            fake.put("pods", pod("web", node="n2", ports=[port(80, 80)]))
            await fake.go_down()
            fake.compact()
            await asyncio.sleep(STALENESS + 1)
            process.send_signal(signal.SIGCONT)

            loop = asyncio.get_running_loop()
            down_until = loop.time() + STALENESS
            while loop.time() < down_until:
                assert await readyz() == 503, "ready while the API server is still down"
                await asyncio.sleep(0.02)
            await fake.come_up()
            for _ in range(1500):
                if (status := await readyz()) == 200:
                    break
                await asyncio.sleep(0.01)
            assert status == 200
            assert await fits_port_80() == ["n1", "n3"]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
        await asyncio.wait_for(process.wait(), 10)
        await fake.stop()
