"""Metrics wired into the extender: rejections by kind, live conflicts, serve's TLS and ops port."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from extender.core.cluster import Cluster
from extender.kube.snapshot import load_objects
from extender.server.app import create_app
from extender.server.binding import SnapshotBinder
from extender.server.metrics import Metrics, new_metrics
from extender.server.ops import create_ops_app
from extender.server.readiness import AlwaysReady
from extender.server.telemetry import live_conflicts
from extender.settings import Settings
from tests.conftest import start_command
from tests.pki import PKI, make_pki

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "config/samples/cluster.yaml"
FILTER_REQUEST = ROOT / "config/samples/filter-pod-identity-agent.json"


def sample_cluster() -> Cluster:
    cluster = Cluster(Settings())
    objects = load_objects([SAMPLE])
    cluster.nodes.replace(objects.nodes)
    cluster.pods.replace(objects.pods)
    return cluster


def running_pod(name: str, node: str, *, host_port: int, host_network: bool = False) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "t", "uid": f"uid-{name}"},
        "spec": {
            "nodeName": node,
            "hostNetwork": host_network,
            "containers": [
                {"name": "c", "ports": [{"containerPort": host_port, "hostPort": host_port}]}
            ],
        },
        "status": {"phase": "Running"},
    }


def test_sample_cluster_has_one_live_conflict() -> None:
    """The bundled sample's one incident: ingress-nginx's hostPort 80 and the pod identity
    agent's two :80 binds on ip-10-0-1-15; everything else is on distinct nodes or addresses."""
    assert live_conflicts(sample_cluster().index) == {"ip-10-0-1-15.ec2.internal": 3}


def test_live_conflicts_count_colliding_pod_claims_per_node() -> None:
    """Two pods on one hostPort, and a pod on a node-reserved port, are live conflicts."""
    cluster = sample_cluster()
    cluster.pods.upsert(running_pod("second-ingress", "ip-10-0-1-11.ec2.internal", host_port=80))
    cluster.pods.upsert(
        running_pod(
            "kubelet-squatter", "ip-10-0-1-14.ec2.internal", host_port=10250, host_network=True
        )
    )
    assert live_conflicts(cluster.index) == {
        "ip-10-0-1-11.ec2.internal": 2,
        "ip-10-0-1-14.ec2.internal": 1,
        "ip-10-0-1-15.ec2.internal": 3,
    }


def sample_app(metrics: Metrics) -> web.Application:
    """The extender over the sample cluster, with `metrics`."""
    cluster = sample_cluster()
    return create_app(
        cluster,
        Settings(),
        binder=SnapshotBinder(cluster),
        readiness=AlwaysReady(),
        metrics=metrics,
    )


async def test_filter_rejections_are_counted_by_claim_kind(
    aiohttp_client: Any,
) -> None:
    """A filter call rejecting nodes increments filter_rejections_total per claim kind."""
    metrics = new_metrics()
    app = sample_app(metrics)
    client = await aiohttp_client(app)
    response = await client.post("/filter", data=FILTER_REQUEST.read_bytes())
    answer = await response.json()
    assert answer["NodeNames"] == ["ip-10-0-1-14.ec2.internal"]
    registry = metrics.registry
    rejections = "hostport_extender_filter_rejections_total"
    assert registry.get_sample_value(rejections, {"reason": "hostPort"}) == 2
    assert registry.get_sample_value(rejections, {"reason": "hostNetwork"}) == 2
    exposition = generate_latest(registry).decode()
    assert "hostport_extender_index_nodes 5.0" in exposition
    assert "hostport_extender_ready 1.0" in exposition
    # The filter held ports for the pod on the node it passed.
    assert "hostport_extender_reservations_in_flight 1.0" in exposition


async def test_errors_are_timed_with_the_status_actually_sent(aiohttp_client: Any) -> None:
    """A body the wire decoder rejects is timed as the 400 sent, not as an exception."""
    metrics = new_metrics()
    app = sample_app(metrics)
    client = await aiohttp_client(app)
    response = await client.post("/filter", data=b"{")
    assert response.status == 400
    count = "hostport_extender_request_duration_seconds_count"
    assert metrics.registry.get_sample_value(count, {"verb": "filter", "code": "400"}) == 1


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def start_serve(pki: PKI) -> subprocess.Popen[str]:
    """`hostport-extender serve` over mTLS with an ops port, as a child process."""
    return start_command(
        "serve",
        "--snapshot",
        str(SAMPLE),
        "--listen",
        "127.0.0.1:0",
        "--ops-listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca),
        "--log-format",
        "json",
    )


async def test_serve_with_client_certs_and_an_ops_port(pki: PKI) -> None:
    """serve --tls-* --ops-listen: verbs need a client cert; the ops port has no verbs."""
    process = start_serve(pki)
    try:
        assert process.stdout is not None
        verbs = re.search(r"on (https://127\.0\.0\.1:\d+)", process.stdout.readline())
        ops = re.search(r"on (http://127\.0\.0\.1:\d+)", process.stdout.readline())
        assert verbs is not None
        assert ops is not None
        body = FILTER_REQUEST.read_bytes()
        good = pki.client_context(with_cert=pki.client_cert, key=pki.client_key)
        async with aiohttp.ClientSession() as session:
            async with session.post(verbs[1] + "/filter", data=body, ssl=good) as response:
                assert (await response.json())["NodeNames"] == ["ip-10-0-1-14.ec2.internal"]
            with pytest.raises(aiohttp.ClientError):
                async with session.post(
                    verbs[1] + "/filter", data=body, ssl=pki.client_context()
                ) as response:
                    await response.read()
            async with session.get(ops[1] + "/readyz") as response:
                assert response.status == 200
            async with session.post(ops[1] + "/bind", data=b"{}") as response:
                assert response.status == 404
            async with session.get(ops[1] + "/metrics") as response:
                text = await response.text()
        assert 'hostport_extender_filter_rejections_total{reason="hostPort"} 2.0' in text
        assert (
            'hostport_extender_request_duration_seconds_count{code="200",verb="filter"} 1.0' in text
        )
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    for line in stderr.splitlines():
        json.loads(line)


async def test_unparsable_listen_annotation_counts_every_node(aiohttp_client: Any) -> None:
    """A pod with a bad listen annotation is rejected everywhere, counted as bad-annotation."""
    metrics = new_metrics()
    app = sample_app(metrics)
    client = await aiohttp_client(app)
    pod = {
        "metadata": {
            "name": "agent",
            "namespace": "t",
            "uid": "u-agent",
            "annotations": {"hostports.dev/listen": "80/TCP@not-an-ip"},
        },
        "spec": {"hostNetwork": True, "containers": [{"name": "c"}]},
    }
    nodes = ["ip-10-0-1-13.ec2.internal", "ip-10-0-1-14.ec2.internal"]
    response = await client.post("/filter", json={"Pod": pod, "NodeNames": nodes})
    assert (await response.json())["NodeNames"] == []
    rejections = "hostport_extender_filter_rejections_total"
    assert metrics.registry.get_sample_value(rejections, {"reason": "bad-annotation"}) == 2


class _SwitchableReadiness:
    def __init__(self) -> None:
        self.reason: str | None = "pods informer not synced"

    def check(self) -> str | None:
        return self.reason


async def test_ops_listener_reports_readiness_and_serves_no_verbs(aiohttp_client: Any) -> None:
    """The ops app answers /readyz 503 with the reason, then 200; it has no scheduler verbs."""
    readiness = _SwitchableReadiness()
    client = await aiohttp_client(create_ops_app(new_metrics(), readiness))
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.text() == "not ready: pods informer not synced\n"
    readiness.reason = None
    assert (await client.get("/readyz")).status == 200
    assert (await client.get("/healthz")).status == 200
    for verb in ("filter", "prioritize", "bind", "preempt"):
        assert (await client.post(f"/{verb}", data=b"{}")).status == 404
    metrics_text = await (await client.get("/metrics")).text()
    assert 'hostport_extender_request_duration_seconds_count{code="503",verb="readyz"} 1.0' in (
        metrics_text
    )
