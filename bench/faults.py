"""How live mode rides out what a real API server does, measured against the fake API server.

    .venv/bin/python -m bench.faults [--staleness 5] [--repeat 3] [--short]
    .venv/bin/python -m bench.faults --idle 60     # CPU and API requests of an idle extender

Each fault runs on a fresh cluster (20 nodes, 200 pods each holding a host port, over TLS) with
churn during the fault (pods created and deleted, ~100 writes/s, stopped when the fault ends),
and prints per fault the medians over the repeats of: when /readyz turned 503 (from the start
of the fault), when it was 200 again (from the end of the fault) and whether the index then
equalled a fresh list. The extender runs in this process (readiness polled every 5 ms), except
for the freeze, where a child `serve` is SIGSTOPped and polled over HTTP. Timings include the
fake's own work in the same event loop and the noise of a shared machine: read them as bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from extender.core.cluster import Cluster
from extender.kube.kubeauth import load_connection
from extender.server.live import Live
from extender.settings import Settings
from extender.webhook import certs
from tests.fakeapi import FakeApiServer, Pki
from tests.truth import Sleeper, matches_truth

RECOVERY_LIMIT = 60.0
"""A fault not recovered from within this long is reported as such (the old code never did)."""
NODES = 20
PODS_HOLDING_PORTS = 200
REPO = Path(__file__).resolve().parents[1]


def host_port_pod(name: str, node: int, host_port: int) -> dict[str, Any]:
    """A running pod bound to node-N holding one TCP host port."""
    return {
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {
            "nodeName": f"node-{node}",
            "containers": [
                {"name": "main", "ports": [{"containerPort": 80, "hostPort": host_port}]}
            ],
        },
        "status": {"phase": "Running"},
    }


def seed(fake: FakeApiServer) -> None:
    for n in range(NODES):
        fake.put("nodes", {"metadata": {"name": f"node-{n}"}})
    for i in range(PODS_HOLDING_PORTS):
        fake.put("pods", host_port_pod(f"held-{i}", i % NODES, 20000 + i))


class Churn:
    """Creates and deletes pods in the fake while running (what controllers do meanwhile)."""

    def __init__(self, fake: FakeApiServer) -> None:
        self._fake = fake
        self._task: asyncio.Task[None] | None = None
        self._next = 0

    async def _run(self) -> None:
        live: list[str] = []
        while True:
            if len(live) > 20 and random.random() < 0.5:
                self._fake.remove("pods", live.pop(0))
            else:
                self._next += 1
                name = f"churn-{self._next}"
                self._fake.put("pods", host_port_pod(name, self._next % NODES, 30000 + self._next))
                live.append(f"bench/{name}")
            await asyncio.sleep(0.01)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


@dataclass
class Stack:
    fake: FakeApiServer
    pki: Pki
    kubeconfig: Path
    live: Live
    cluster: Cluster
    sleeper: Sleeper

    def ready(self) -> bool:
        return self.live.readiness.check() is None

    def in_sync(self) -> bool:
        return matches_truth(self.cluster, self.fake)


async def wait_for(condition: Callable[[], bool], limit: float = 120.0) -> float:
    """Seconds until `condition()` holds, polled every 5 ms."""
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > limit:
            raise SystemExit(f"gave up after {limit:g} s")
        await asyncio.sleep(0.005)
    return time.perf_counter() - start


async def until(check: Callable[[], Awaitable[bool]], limit: float = 120.0) -> float:
    """Seconds until `await check()` holds, polled every 5 ms (over HTTP: no event to wait on)."""
    start = time.perf_counter()
    while not await check():
        if time.perf_counter() - start > limit:
            raise SystemExit(f"gave up after {limit:g} s")
        await asyncio.sleep(0.005)
    return time.perf_counter() - start


@contextlib.asynccontextmanager
async def stack(
    directory: Path, staleness: float, *, client_cert: bool = False
) -> AsyncIterator[Stack]:
    pki = Pki.create(directory / "pki")
    fake = FakeApiServer(token="t", pki=pki, history_limit=100_000)
    seed(fake)
    await fake.start()
    kubeconfig = directory / "kubeconfig"
    if client_cert:
        fake.write_kubeconfig(kubeconfig, client_cert=pki.issue_client("extender"))
    else:
        fake.write_kubeconfig(kubeconfig, token="t")
    cluster = Cluster(Settings(staleness_seconds=staleness))
    sleeper = Sleeper()
    live = Live(
        load_connection(str(kubeconfig)), cluster, staleness_seconds=staleness, sleep=sleeper
    )
    lifetime = live.run_informers(web.Application())
    await anext(lifetime)
    running = Stack(fake, pki, kubeconfig, live, cluster, sleeper)
    try:
        await wait_for(running.ready)
        await wait_for(lambda: fake.open_watches == 2)
        yield running
    finally:
        await anext(lifetime, None)
        await fake.stop()


@dataclass(frozen=True, slots=True)
class Outcome:
    not_ready_after: float | None
    """Seconds from the start of the fault to the first 503 (None: stayed ready)."""
    ready_after: float | None
    """Seconds from the end of the fault to the first 200 (None: not within RECOVERY_LIMIT)."""
    equal: bool
    """The index equalled a fresh list at that first 200."""
    applies: bool = True
    """False where "503 after" means nothing (a fresh start)."""


async def _during(running: Stack, seconds: float, started: float) -> float | None:
    """Hold the fault for `seconds`; when (from `started`) readiness first turned off."""
    turned: float | None = None
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        if turned is None and not running.ready():
            turned = time.perf_counter() - started
        await asyncio.sleep(0.005)
    return turned


async def _recovered(running: Stack, churn: Churn) -> tuple[float | None, bool]:
    await churn.stop()
    try:
        took: float | None = await wait_for(running.ready, limit=RECOVERY_LIMIT)
    except SystemExit:
        took = None
    return took, running.in_sync()


async def apiserver_down(directory: Path, staleness: float, seconds: float) -> Outcome:
    async with stack(directory, staleness) as running:
        churn = Churn(running.fake)
        churn.start()
        started = time.perf_counter()
        await running.fake.go_down()
        turned = await _during(running, seconds, started)
        await running.fake.come_up()
        took, equal = await _recovered(running, churn)
        return Outcome(turned, took, equal)


async def apiserver_stalled(directory: Path, staleness: float, seconds: float) -> Outcome:
    async with stack(directory, staleness) as running:
        churn = Churn(running.fake)
        churn.start()
        started = time.perf_counter()
        running.fake.stall()
        turned = await _during(running, seconds, started)
        running.fake.resume()
        took, equal = await _recovered(running, churn)
        return Outcome(turned, took, equal)


async def client_ca_rotated(directory: Path, staleness: float, seconds: float) -> Outcome:
    async with stack(directory, staleness, client_cert=True) as running:
        churn = Churn(running.fake)
        churn.start()
        started = time.perf_counter()
        new_ca = certs.new_authority("bench-client-ca-2", days=2)
        running.fake.trust_client_ca(new_ca)
        running.fake.break_streams()
        turned = await _during(running, seconds, started)
        running.pki.issue_client("extender", authority=new_ca)  # rewritten in place
        took, equal = await _recovered(running, churn)
        return Outcome(turned, took, equal)


async def backoff_then_410(directory: Path, staleness: float, seconds: float) -> Outcome:
    """401s until the backoff is at 30 s (sleeps cut short to build it), then a 410 on return."""
    async with stack(directory, staleness) as running:
        fake, sleeper = running.fake, running.sleeper
        churn = Churn(fake)
        churn.start()
        started = time.perf_counter()
        sleeper.fast = True
        fake.rotate_token("t-2")
        fake.break_streams()
        await wait_for(lambda: sum(delay >= 30 for delay in sleeper.delays) >= 2)
        sleeper.fast = False
        turned = await _during(running, max(seconds, staleness + 1), started)
        fake.compact()
        fake.rotate_token("t")
        took, equal = await _recovered(running, churn)
        return Outcome(turned, took, equal)


async def extender_restarted(directory: Path, staleness: float, seconds: float) -> Outcome:
    """A second extender starts mid-churn: from its start to ready (and equal once churn stops)."""
    async with stack(directory, staleness) as running:
        churn = Churn(running.fake)
        churn.start()
        await asyncio.sleep(1.0)
        cluster = Cluster(Settings(staleness_seconds=staleness))
        live = Live(load_connection(str(running.kubeconfig)), cluster, staleness_seconds=staleness)
        started = time.perf_counter()
        lifetime = live.run_informers(web.Application())
        await anext(lifetime)
        try:
            took = await wait_for(lambda: live.readiness.check() is None)
            await churn.stop()
            second = Stack(running.fake, running.pki, running.kubeconfig, live, cluster, Sleeper())
            await wait_for(second.in_sync, limit=10)
            equal = second.in_sync()
        finally:
            await anext(lifetime, None)
        del started
        return Outcome(None, took, equal, applies=False)


async def port_is_free(http: aiohttp.ClientSession, base: str, i: int) -> bool:
    """Whether the extender lets a new pod take held-i's port on held-i's node."""
    wanted = host_port_pod("probe", 0, 20000 + i)
    del wanted["spec"]["nodeName"]
    body = {"Pod": wanted, "Nodes": None, "NodeNames": [f"node-{i % NODES}"]}
    async with http.post(base + "/filter", data=orjson.dumps(body)) as response:
        return bool(orjson.loads(await response.read())["NodeNames"])


async def extender_frozen(directory: Path, staleness: float, seconds: float) -> Outcome:
    """A child `serve` is SIGSTOPped; 29 pods deleted, history compacted, the API server
    restarted (down 1 s after SIGCONT). 503 is timed from SIGCONT, 200 from the API server's
    return; "equal" is each deleted pod's port being free at that first 200."""
    pki = Pki.create(directory / "pki")
    fake = FakeApiServer(token="t", pki=pki, history_limit=100_000)
    seed(fake)
    await fake.start()
    kubeconfig = fake.write_kubeconfig(directory / "kubeconfig", token="t")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "extender", "serve", "--kubeconfig", str(kubeconfig),
        "--listen", "127.0.0.1:0", "--staleness-seconds", str(staleness),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    churn = Churn(fake)
    try:
        assert process.stdout is not None
        banner = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        base = banner.rsplit(" on ", 1)[1].strip()
        async with aiohttp.ClientSession() as http:

            async def status_is(wanted: int) -> bool:
                async with http.get(base + "/readyz") as response:
                    return response.status == wanted

            await until(lambda: status_is(200))
            churn.start()
            await asyncio.sleep(0.5)
            process.send_signal(signal.SIGSTOP)
            for i in range(29):
                fake.remove("pods", f"bench/held-{i}")
            await fake.go_down()
            fake.compact()
            await asyncio.sleep(seconds)
            process.send_signal(signal.SIGCONT)
            started = time.perf_counter()
            turned: float | None = None
            end = time.perf_counter() + 1.0
            while time.perf_counter() < end:
                if turned is None and await status_is(503):
                    turned = time.perf_counter() - started
                await asyncio.sleep(0.005)
            await fake.come_up()
            await churn.stop()
            try:
                took: float | None = await until(lambda: status_is(200), limit=RECOVERY_LIMIT)
            except SystemExit:
                took = None
            equal = all([await port_is_free(http, base, i) for i in range(29)])
            return Outcome(turned, took, equal)
    finally:
        await churn.stop()
        if process.returncode is None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
        await process.wait()
        await fake.stop()


async def idle_cost(seconds: float) -> None:
    """CPU time and API requests of an idle child `serve` (default staleness) over `seconds`."""
    with tempfile.TemporaryDirectory() as directory:
        fake = FakeApiServer(token="t", pki=Pki.create(Path(directory) / "pki"))
        seed(fake)
        await fake.start()
        kubeconfig = fake.write_kubeconfig(Path(directory) / "kubeconfig", token="t")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "extender", "serve", "--kubeconfig", str(kubeconfig),
            "--listen", "127.0.0.1:0",
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            await asyncio.wait_for(process.stdout.readline(), 30)
            await wait_for(lambda: fake.open_watches == 2, limit=30)
            await asyncio.sleep(2.0)  # let the initial sync's garbage settle

            def cpu_seconds() -> float:
                fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

            cpu, requests = cpu_seconds(), len(fake.requests)
            await asyncio.sleep(seconds)
            cpu, requests = cpu_seconds() - cpu, len(fake.requests) - requests
            print(
                f"idle live extender over {seconds:g} s: {cpu * 1000:.0f} ms CPU, "
                f"{requests} API requests"
            )
        finally:
            process.terminate()
            await process.wait()
            await fake.stop()


FAULTS = {
    "apiserver down": (apiserver_down, 10.0),
    "apiserver stalled (connections open, silent)": (apiserver_stalled, 20.0),
    "client CA rotated, new cert on disk after": (client_ca_rotated, 8.0),
    "401s (backoff at 30 s), then accepted + 410": (backoff_then_410, 0.0),
    "extender SIGSTOPped, compaction, apiserver restart": (extender_frozen, 10.0),
    "extender restarted mid-churn": (extender_restarted, 0.0),
}


def _median(values: list[float | None], missing: str) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return missing
    text = f"{statistics.median(known):.2f} s"
    return text if len(known) == len(values) else f"{text} ({len(values) - len(known)}: {missing})"


async def main(staleness: float, repeat: int, short: bool) -> None:
    print(f"staleness bound {staleness:g} s; medians of {repeat} runs; fault durations in brackets")
    print(f"{'fault':<58} {'503 after':>12} {'200 after':>10}  index equal")
    for name, (scenario, seconds) in FAULTS.items():
        held = min(seconds, staleness + 2) if short and seconds else seconds
        outcomes = []
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as directory:
                outcomes.append(await scenario(Path(directory), staleness, held))
        label = f"{name} [{held:g} s]" if held else name
        equal = sum(o.equal for o in outcomes)
        turned = _median([o.not_ready_after for o in outcomes], "stayed 200")
        back = _median([o.ready_after for o in outcomes], f"> {RECOVERY_LIMIT:g} s")
        if not outcomes[0].applies:
            turned = "-"
        print(f"{label:<58} {turned:>12} {back:>10}  {equal}/{repeat}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--staleness", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--short", action="store_true", help="hold each fault staleness + 2 s")
    parser.add_argument(
        "--idle", type=float, metavar="SECONDS", help="only measure an idle extender's cost"
    )
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the faults are meant: their warnings are noise
    if arguments.idle:
        asyncio.run(idle_cost(arguments.idle))
    else:
        asyncio.run(main(arguments.staleness, arguments.repeat, arguments.short))
