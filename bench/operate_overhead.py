"""What operating features cost: the metrics middleware on /filter, a scrape, the webhook.

    .venv/bin/python bench/operate_overhead.py [REQUESTS]

Sequential requests over one keep-alive connection to real servers on 127.0.0.1, with the
bundled sample cluster; the first 10 % are warm-up and not counted. Prints medians and p99.
"""

from __future__ import annotations

import asyncio
import ssl
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import generate_latest

from extender.core.cluster import Cluster
from extender.core.routing import RoutingPolicy
from extender.kube.snapshot import load_objects
from extender.server import tls
from extender.server.app import create_app
from extender.server.binding import SnapshotBinder
from extender.server.metrics import Metrics, new_metrics
from extender.server.readiness import AlwaysReady
from extender.settings import Settings
from extender.webhook import certs
from extender.webhook.app import create_webhook_app
from extender.webhook.lease import LeaseRecord, LeaseWatch

ROOT = Path(__file__).resolve().parent.parent
FILTER_BODY = (ROOT / "config/samples/filter-pod-identity-agent.json").read_bytes()
REVIEW_BODY = (
    b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1",'
    b'"resource":{"group":"","version":"v1","resource":"pods"},"namespace":"ingress-nginx",'
    b'"operation":"CREATE","object":{"metadata":{"generateName":"ingress-"},"spec":{'
    b'"containers":[{"name":"c","ports":[{"containerPort":80,"hostPort":80}]}]}}}}'
)
SERVICE = "hostport-extender-webhook.hostport-system.svc"


async def timed_posts(
    url: str, body: bytes, count: int, context: ssl.SSLContext | None = None
) -> list[float]:
    times = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.post(
                url,
                data=body,
                ssl=context if context is not None else True,
                server_hostname=SERVICE if context is not None else None,
            ) as response:
                await response.read()
            times.append(time.perf_counter() - started)
    return times[count // 10 :]


async def filter_times(metrics: Metrics | None, count: int) -> list[float]:
    # No in-flight holds: every request sees the same index.
    settings = Settings(in_flight_ttl_seconds=0.0)
    cluster = Cluster(settings)
    objects = load_objects([ROOT / "config/samples/cluster.yaml"])
    cluster.nodes.replace(objects.nodes)
    cluster.pods.replace(objects.pods)
    app = create_app(
        cluster, settings, binder=SnapshotBinder(cluster), readiness=AlwaysReady(), metrics=metrics
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        port = runner.addresses[0][1]
        return await timed_posts(f"http://127.0.0.1:{port}/filter", FILTER_BODY, count)
    finally:
        await runner.cleanup()


async def webhook_times(count: int, directory: Path) -> list[float]:
    authority = certs.new_authority("bench CA")
    serving = certs.issue(authority, SERVICE, dns_names=[SERVICE])
    (directory / "tls.crt").write_bytes(serving.cert_pem)
    (directory / "tls.key").write_bytes(serving.key_pem)
    (directory / "ca.crt").write_bytes(authority.cert_pem)
    server = tls.server_context(tls.TLSFiles(directory / "tls.crt", directory / "tls.key"))
    # A Lease renewed just now, held in the cache (no API server in this bench).
    lease = LeaseWatch(None, "hostport-system", "hostport-aware-scheduler")
    lease.record = LeaseRecord("read", "bench", time.time(), 3600, renewed_at=time.monotonic())
    app = create_webhook_app(RoutingPolicy(), new_metrics(), lease)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server).start()
    try:
        port = runner.addresses[0][1]
        client = ssl.create_default_context(cafile=str(directory / "ca.crt"))
        return await timed_posts(f"https://127.0.0.1:{port}/mutate", REVIEW_BODY, count, client)
    finally:
        await runner.cleanup()


def show(name: str, times: list[float]) -> None:
    ordered = sorted(times)
    p99 = ordered[int(len(ordered) * 0.99)]
    print(
        f"{name:<42} n={len(ordered)}  median {statistics.median(ordered) * 1e6:6.0f} us"
        f"  p99 {p99 * 1e6:6.0f} us"
    )


async def main(count: int) -> None:
    metrics = new_metrics()
    observe = timeit.timeit(
        lambda: metrics.request_seconds.labels(verb="filter", code="200").observe(0.0003),
        number=100_000,
    )
    print(f"{'middleware: labels().observe()':<42} {observe / 100_000 * 1e6:.2f} us")
    for _ in range(2):
        show("POST /filter without metrics", await filter_times(None, count))
        show("POST /filter with metrics", await filter_times(metrics, count))
    renders = timeit.timeit(lambda: generate_latest(metrics.registry), number=200)
    print(f"{'GET /metrics body render':<42} {renders / 200 * 1e3:.2f} ms")
    with tempfile.TemporaryDirectory() as directory:
        show("POST /mutate (webhook, HTTPS)", await webhook_times(count, Path(directory)))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
