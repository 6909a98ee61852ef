"""Publishing the observed listeners to a node, against a small fake of the node PATCH endpoint."""

from __future__ import annotations

import asyncio
import base64
import random
import re
import ssl
import subprocess
import sys
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from extender.agent import (
    OBSERVED,
    OBSERVED_AT,
    ApiConnection,
    LoopSettings,
    NodeApi,
    Observed,
    Publisher,
    PublishError,
    load_api_connection,
    run_loop,
)
from extender.certs import issue, new_authority
from extender.cluster import Cluster
from extender.decisions import filter_pod
from extender.pods import decode_pod
from extender.settings import Settings
from tests.objects import node, pod, port


class ServerFactory(Protocol):
    """pytest-aiohttp's `aiohttp_server`: starts `app` on 127.0.0.1:0 (`ssl=` for HTTPS)."""

    def __call__(self, app: web.Application, **kwargs: Any) -> Awaitable[TestServer]: ...


TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
TCP_LISTEN_80 = "   0: 17AAFEA9:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1"


@dataclass
class FakeNodes:
    """Just `PATCH /api/v1/nodes/{name}` of an API server: merges annotations, can fail on cue."""

    nodes: dict[str, dict[str, str]] = field(default_factory=lambda: {"node-a": {}})
    fail_with: list[int] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    patched: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_patch("/api/v1/nodes/{name}", self.patch)
        return app

    async def patch(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        raw_patch = orjson.loads(await request.read())
        self.requests.append(
            {
                "name": name,
                "content_type": request.content_type,
                "authorization": request.headers.get("Authorization"),
                "body": raw_patch,
            }
        )
        if self.fail_with:
            status = self.fail_with.pop(0)
            return _status(status, f"injected failure {status}")
        if name not in self.nodes:
            return _status(404, f'nodes "{name}" not found')
        if request.content_type != "application/merge-patch+json":
            return _status(415, f"unsupported patch type {request.content_type}")
        self.nodes[name].update(raw_patch["metadata"]["annotations"])
        self.patched.set()
        raw_node = {"kind": "Node", "metadata": {"name": name, "annotations": self.nodes[name]}}
        return web.json_response(raw_node)


def _status(code: int, message: str) -> web.Response:
    raw_status = {"kind": "Status", "status": "Failure", "message": message, "code": code}
    return web.json_response(raw_status, status=code)


async def _serve(fake: FakeNodes, aiohttp_server: ServerFactory) -> TestServer:
    return await aiohttp_server(fake.app())


def _connection(server: TestServer, token: str | None = None) -> ApiConnection:
    return ApiConnection(
        str(server.make_url("")), False, lambda: f"Bearer {token}" if token else None
    )


def _fake_proc(root: Path, tcp_lines: list[str]) -> Path:
    """A /proc lookalike with the files the agent reads."""
    (root / "net").mkdir(parents=True)
    (root / "sys/net/ipv4").mkdir(parents=True)
    (root / "net/tcp").write_text("\n".join([TCP_HEADER, *tcp_lines]) + "\n")
    (root / "sys/net/ipv4/ip_local_port_range").write_text("32768\t60999\n")
    return root


async def test_publish_only_when_the_set_changes(aiohttp_server: ServerFactory) -> None:
    """A changed set sends one merge patch; the same set again sends none."""
    fake = FakeNodes()
    server = await _serve(fake, aiohttp_server)
    async with aiohttp.ClientSession() as session:
        publisher = Publisher(
            "node-a", NodeApi(session, _connection(server)).patch_node_annotations, refresh=3600
        )
        assert await publisher.publish(Observed("80/TCP@169.254.170.23"), "2026-11-24T21:00:00Z")
        assert not await publisher.publish(
            Observed("80/TCP@169.254.170.23"), "2026-11-24T21:00:30Z"
        )
        assert await publisher.publish(
            Observed("80/TCP@169.254.170.23,8125/UDP"), "2026-11-24T21:01:00Z"
        )
    assert [r["body"] for r in fake.requests] == [
        {
            "metadata": {
                "annotations": {
                    OBSERVED: "80/TCP@169.254.170.23",
                    OBSERVED_AT: "2026-11-24T21:00:00Z",
                }
            }
        },
        {
            "metadata": {
                "annotations": {
                    OBSERVED: "80/TCP@169.254.170.23,8125/UDP",
                    OBSERVED_AT: "2026-11-24T21:01:00Z",
                }
            }
        },
    ]
    assert {r["content_type"] for r in fake.requests} == {"application/merge-patch+json"}
    assert fake.nodes["node-a"][OBSERVED] == "80/TCP@169.254.170.23,8125/UDP"


async def test_unchanged_set_is_refreshed(aiohttp_server: ServerFactory) -> None:
    """An unchanged set is re-published once `refresh` has passed, so observed-at stays fresh."""
    fake = FakeNodes()
    server = await _serve(fake, aiohttp_server)
    now = [1000.0]
    async with aiohttp.ClientSession() as session:
        patch = NodeApi(session, _connection(server)).patch_node_annotations
        publisher = Publisher("node-a", patch, refresh=150, clock=lambda: now[0])
        assert await publisher.publish(Observed(""), "2026-11-24T21:00:00Z")
        now[0] += 149
        assert not await publisher.publish(Observed(""), "2026-11-24T21:02:29Z")
        now[0] += 1
        assert await publisher.publish(Observed(""), "2026-11-24T21:02:30Z")
    assert fake.nodes["node-a"] == {OBSERVED: "", OBSERVED_AT: "2026-11-24T21:02:30Z"}
    assert len(fake.requests) == 2


async def test_api_errors_back_off_then_publish(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """500 and 503 are retried after growing, jittered delays; success returns to the interval."""
    fake = FakeNodes(fail_with=[500, 503, 500])
    server = await _serve(fake, aiohttp_server)
    settings = LoopSettings(
        node="node-a",
        proc=_fake_proc(tmp_path, [TCP_LISTEN_80]),
        interval=30,
        backoff_initial=1,
        backoff_max=3,
    )
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    async with aiohttp.ClientSession() as session:
        publisher = Publisher(
            "node-a", NodeApi(session, _connection(server)).patch_node_annotations, refresh=3600
        )
        await run_loop(settings, publisher, sleep=record, rng=random.Random(7), cycles=5)
    assert len(fake.requests) == 4  # three failures, one success, then nothing new to say
    assert fake.nodes["node-a"][OBSERVED] == "80/TCP@169.254.170.23"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fake.nodes["node-a"][OBSERVED_AT])
    first, second, third, after_success, steady = waits
    assert [0.5 <= first <= 1, 1 <= second <= 2, 1.5 <= third <= 3] == [True] * 3  # cap 3
    assert [24 <= after_success <= 36, 24 <= steady <= 36] == [True, True]


async def test_patch_errors_name_the_node_and_the_reason(aiohttp_server: ServerFactory) -> None:
    """A node that does not exist gives the API's own message, not a traceback."""
    server = await _serve(FakeNodes(), aiohttp_server)
    async with aiohttp.ClientSession() as session:
        api = NodeApi(session, _connection(server))
        with pytest.raises(
            PublishError, match=r"PATCH node 'ghost': HTTP 404: nodes \"ghost\" not found"
        ):
            await api.patch_node_annotations("ghost", {OBSERVED: ""})


async def test_unreachable_api_is_a_publish_error(aiohttp_server: ServerFactory) -> None:
    """A refused connection is a PublishError (the loop backs off), not a crash."""
    server = await _serve(FakeNodes(), aiohttp_server)
    connection = _connection(server)
    await server.close()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(PublishError, match="PATCH node 'node-a'"):
            await NodeApi(session, connection).patch_node_annotations("node-a", {OBSERVED: ""})


def _kubeconfig(path: Path, server: str, token: str, ca: Path | None = None) -> Path:
    cluster: dict[str, str] = {"server": server}
    if ca is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
    path.write_text(
        orjson.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": cluster}],
                "users": [{"name": "agent", "user": {"token": token}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "agent"}}],
                "current-context": "fake",
            }
        ).decode()
    )
    return path


async def test_kubeconfig_credentials_reach_the_api(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The official kubeconfig loader's server and bearer token are what the PATCH uses."""
    fake = FakeNodes()
    server = await _serve(fake, aiohttp_server)
    url = str(server.make_url("")).rstrip("/")
    connection = load_api_connection(str(_kubeconfig(tmp_path / "config", url, "s3cret")))
    async with aiohttp.ClientSession() as session:
        await NodeApi(session, connection).patch_node_annotations("node-a", {OBSERVED: "22/TCP"})
    assert fake.requests[0]["authorization"] == "Bearer s3cret"
    assert fake.nodes["node-a"] == {OBSERVED: "22/TCP"}


async def test_agent_command_publishes_to_the_node(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """`agent --node-name` patches its node through a kubeconfig and keeps running."""
    fake = FakeNodes()
    server = await _serve(fake, aiohttp_server)
    url = str(server.make_url("")).rstrip("/")
    kubeconfig = _kubeconfig(tmp_path / "config", url, "t0ken")
    proc = _fake_proc(tmp_path / "proc", [TCP_LISTEN_80])
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "extender",
        "agent",
        "--node-name",
        "node-a",
        "--kubeconfig",
        str(kubeconfig),
        "--proc",
        str(proc),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.wait_for(fake.patched.wait(), timeout=60)
        assert agent.returncode is None
    finally:
        agent.terminate()
        await agent.wait()
    assert fake.nodes["node-a"][OBSERVED] == "80/TCP@169.254.170.23"
    assert fake.requests[0]["authorization"] == "Bearer t0ken"


def test_agent_command_without_node_name_says_so(tmp_path: Path) -> None:
    """Loop mode without --node-name or NODE_NAME exits 1 with a clear message."""
    result = subprocess.run(
        [sys.executable, "-m", "extender", "agent"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "hostport-extender agent: no node name: pass --node-name or set NODE_NAME"
    )


async def test_extender_rejects_a_pod_on_what_the_agent_published(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The annotations one agent cycle writes make the extender reject hostPort 80 on that node."""
    fake = FakeNodes()
    server = await _serve(fake, aiohttp_server)
    settings = LoopSettings(node="node-a", proc=_fake_proc(tmp_path, [TCP_LISTEN_80]))

    async def no_wait(seconds: float) -> None:
        del seconds

    async with aiohttp.ClientSession() as session:
        patch = NodeApi(session, _connection(server)).patch_node_annotations
        await run_loop(settings, Publisher("node-a", patch, refresh=150), sleep=no_wait, cycles=1)
    cluster = Cluster(Settings())
    cluster.nodes.upsert(node("node-a", fake.nodes["node-a"]))
    cluster.nodes.upsert(node("node-b"))
    web_pod = decode_pod(pod("web", ports=[port(8080, 80)]), strict=True)
    reasons = filter_pod(cluster, web_pod, {"node-a", "node-b"}).final()
    assert list(reasons) == ["node-a"]
    assert "observed listening on the host" in reasons["node-a"]
    other = decode_pod(pod("web", ports=[port(8080, 81)]), strict=True)
    assert filter_pod(cluster, other, {"node-a"}).final() == {}


@pytest.fixture
def api_tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path, Path]:
    """A server context for 127.0.0.1 signed by a test CA, that CA, and an unrelated CA."""
    cluster_ca, other_ca = new_authority("cluster-ca"), new_authority("other-ca")
    serving = issue(cluster_ca, "kube-apiserver", ip_addresses=["127.0.0.1"])
    paths = {}
    for name, pem in [
        ("api.crt", serving.cert_pem),
        ("api.key", serving.key_pem),
        ("cluster-ca.crt", cluster_ca.cert_pem),
        ("other-ca.crt", other_ca.cert_pem),
    ]:
        paths[name] = tmp_path / name
        paths[name].write_bytes(pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(paths["api.crt"], paths["api.key"])
    return context, paths["cluster-ca.crt"], paths["other-ca.crt"]


async def test_https_api_verified_with_the_kubeconfig_ca(
    aiohttp_server: ServerFactory, tmp_path: Path, api_tls: tuple[ssl.SSLContext, Path, Path]
) -> None:
    """Over HTTPS the kubeconfig's CA verifies the API server; a different CA is refused."""
    context, ca_cert, other_ca = api_tls
    fake = FakeNodes()
    server = await aiohttp_server(fake.app(), ssl=context)
    url = str(server.make_url("")).rstrip("/")
    assert url.startswith("https://127.0.0.1:")
    trusted = load_api_connection(str(_kubeconfig(tmp_path / "ok", url, "tls-token", ca_cert)))
    untrusted = load_api_connection(str(_kubeconfig(tmp_path / "bad", url, "tls-token", other_ca)))
    async with aiohttp.ClientSession() as session:
        await NodeApi(session, trusted).patch_node_annotations("node-a", {OBSERVED: "443/TCP"})
        with pytest.raises(PublishError, match="certificate verify failed"):
            await NodeApi(session, untrusted).patch_node_annotations("node-a", {OBSERVED: ""})
    assert fake.nodes["node-a"] == {OBSERVED: "443/TCP"}
    assert [r["authorization"] for r in fake.requests] == ["Bearer tls-token"]
