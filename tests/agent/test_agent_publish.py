"""Publishing the observed listeners to a node, through the shared API client and the fake API.

The agent patches through kube/kubeapi.py with credentials from kube/kubeauth.py, the same
client the extender's live mode uses; tests/fakeapi.py plays the API server (node merge-patch,
bearer tokens, its own CA, injected failures, going down).
"""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from extender.agent.command import (
    OBSERVED,
    OBSERVED_AT,
    LoopSettings,
    Observed,
    Publisher,
    PublishError,
    api_patcher,
    run_loop,
)
from extender.core.cluster import Cluster
from extender.core.decisions import filter_pod
from extender.core.pods import decode_pod
from extender.kube.kubeapi import KubeApi
from extender.kube.kubeauth import load_connection
from extender.settings import Settings
from extender.webhook import certs
from tests.fakeapi import FakeApiServer, Pki, eventually
from tests.objects import node, pod, port

TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
TCP_LISTEN_80 = "   0: 17AAFEA9:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1"
TOKEN = "agent-token"


@pytest.fixture
async def fake() -> AsyncIterator[FakeApiServer]:
    """A fake API server over plain HTTP with one node, `node-a`, accepting TOKEN."""
    server = FakeApiServer(token=TOKEN)
    server.put("nodes", {"metadata": {"name": "node-a"}})
    await server.start()
    yield server
    await server.stop()


def connect(fake: FakeApiServer, tmp_path: Path, token: str = TOKEN) -> KubeApi:
    """The shared client for `fake`, configured through a generated kubeconfig."""
    kubeconfig = fake.write_kubeconfig(tmp_path / "config", token=token)
    return KubeApi(load_connection(str(kubeconfig)))


def node_annotations(fake: FakeApiServer, name: str = "node-a") -> dict[str, str]:
    """The node's annotations as the API server stores them."""
    found: dict[str, str] = fake.get("nodes", name)["metadata"].get("annotations", {})
    return found


def patches(fake: FakeApiServer) -> list[str]:
    """The paths of the PATCH requests the fake received (accepted or not)."""
    return [r.path for r in fake.requests if r.method == "PATCH"]


def _fake_proc(root: Path, tcp_lines: list[str]) -> Path:
    """A /proc lookalike with the files the agent reads."""
    (root / "net").mkdir(parents=True)
    (root / "sys/net/ipv4").mkdir(parents=True)
    (root / "net/tcp").write_text("\n".join([TCP_HEADER, *tcp_lines]) + "\n")
    (root / "sys/net/ipv4/ip_local_port_range").write_text("32768\t60999\n")
    return root


async def test_publish_only_when_the_set_changes(fake: FakeApiServer, tmp_path: Path) -> None:
    """A changed set sends one merge patch; the same set again sends none."""
    async with connect(fake, tmp_path) as api:
        publisher = Publisher("node-a", api_patcher(api), refresh=3600)
        assert await publisher.publish(Observed("80/TCP@169.254.170.23"), "2026-11-24T21:00:00Z")
        assert node_annotations(fake) == {
            OBSERVED: "80/TCP@169.254.170.23",
            OBSERVED_AT: "2026-11-24T21:00:00Z",
        }
        assert not await publisher.publish(
            Observed("80/TCP@169.254.170.23"), "2026-11-24T21:00:30Z"
        )
        assert await publisher.publish(
            Observed("80/TCP@169.254.170.23,8125/UDP"), "2026-11-24T21:01:00Z"
        )
    assert patches(fake) == ["/api/v1/nodes/node-a"] * 2
    assert node_annotations(fake) == {
        OBSERVED: "80/TCP@169.254.170.23,8125/UDP",
        OBSERVED_AT: "2026-11-24T21:01:00Z",
    }


async def test_patch_keeps_other_annotations(fake: FakeApiServer, tmp_path: Path) -> None:
    """A merge patch: the node's other annotations (other writers) are left as they were."""
    fake.put("nodes", {"metadata": {"name": "node-a", "annotations": {"team": "infra"}}})
    async with connect(fake, tmp_path) as api:
        await api_patcher(api)("node-a", {OBSERVED: "22/TCP", OBSERVED_AT: "2026-11-24T21:00:00Z"})
    assert node_annotations(fake) == {
        "team": "infra",
        OBSERVED: "22/TCP",
        OBSERVED_AT: "2026-11-24T21:00:00Z",
    }


async def test_unchanged_set_is_refreshed(fake: FakeApiServer, tmp_path: Path) -> None:
    """An unchanged set is re-published once `refresh` has passed, so observed-at stays fresh."""
    now = [1000.0]
    async with connect(fake, tmp_path) as api:
        publisher = Publisher("node-a", api_patcher(api), refresh=150, clock=lambda: now[0])
        assert await publisher.publish(Observed(""), "2026-11-24T21:00:00Z")
        now[0] += 149
        assert not await publisher.publish(Observed(""), "2026-11-24T21:02:29Z")
        now[0] += 1
        assert await publisher.publish(Observed(""), "2026-11-24T21:02:30Z")
    assert node_annotations(fake) == {OBSERVED: "", OBSERVED_AT: "2026-11-24T21:02:30Z"}
    assert len(patches(fake)) == 2


async def test_api_errors_back_off_then_publish(fake: FakeApiServer, tmp_path: Path) -> None:
    """500 and 503 are retried after growing, jittered delays; success returns to the interval."""
    for status in (500, 503, 500):
        fake.inject_error(status, method="PATCH")
    settings = LoopSettings(
        node="node-a",
        proc=_fake_proc(tmp_path / "proc", [TCP_LISTEN_80]),
        interval=30,
        backoff_initial=1,
        backoff_max=3,
    )
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    async with connect(fake, tmp_path) as api:
        publisher = Publisher("node-a", api_patcher(api), refresh=3600)
        await run_loop(settings, publisher, sleep=record, rng=random.Random(7), cycles=5)
    assert len(patches(fake)) == 4  # three failures, one success, then nothing new to say
    assert node_annotations(fake)[OBSERVED] == "80/TCP@169.254.170.23"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", node_annotations(fake)[OBSERVED_AT])
    first, second, third, after_success, steady = waits
    assert [0.5 <= first <= 1, 1 <= second <= 2, 1.5 <= third <= 3] == [True] * 3  # cap 3
    assert [24 <= after_success <= 36, 24 <= steady <= 36] == [True, True]


async def test_api_error_is_logged_with_the_api_message(
    fake: FakeApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop's warning carries the status and the API server's own message."""
    fake.inject_error(503, method="PATCH")
    settings = LoopSettings(node="node-a", proc=_fake_proc(tmp_path / "proc", [TCP_LISTEN_80]))

    async def no_wait(seconds: float) -> None:
        del seconds

    async with connect(fake, tmp_path) as api:
        publisher = Publisher("node-a", api_patcher(api), refresh=3600)
        await run_loop(settings, publisher, sleep=no_wait, cycles=1)
    assert any(
        record.levelname == "WARNING"
        and record.getMessage().startswith(
            "PATCH node 'node-a': HTTP 503: injected by the test; retrying in "
        )
        for record in caplog.records
    ), caplog.text


async def test_patch_errors_name_the_node_and_the_reason(
    fake: FakeApiServer, tmp_path: Path
) -> None:
    """A node that does not exist gives the API's own message, not a traceback."""
    async with connect(fake, tmp_path) as api:
        with pytest.raises(PublishError) as caught:
            await api_patcher(api)("ghost", {OBSERVED: ""})
    assert str(caught.value) == "PATCH node 'ghost': HTTP 404: nodes \"ghost\" not found"


async def test_unreachable_api_is_a_publish_error(fake: FakeApiServer, tmp_path: Path) -> None:
    """A refused connection is a PublishError naming node, host and port (the loop backs off)."""
    api = connect(fake, tmp_path)
    await fake.go_down()
    async with api:
        with pytest.raises(PublishError) as caught:
            await api_patcher(api)("node-a", {OBSERVED: ""})
    assert str(caught.value).startswith(
        f"PATCH node 'node-a': cannot connect to 127.0.0.1:{fake.port}: "
    )
    assert "object at 0x" not in str(caught.value)


async def test_kubeconfig_credentials_reach_the_api(fake: FakeApiServer, tmp_path: Path) -> None:
    """The kubeconfig's server and bearer token are what the PATCH uses."""
    async with connect(fake, tmp_path) as api:
        await api_patcher(api)("node-a", {OBSERVED: "22/TCP"})
    assert [r.authorization for r in fake.requests] == [f"Bearer {TOKEN}"]
    assert node_annotations(fake) == {OBSERVED: "22/TCP"}


async def test_a_rotated_token_is_picked_up(fake: FakeApiServer, tmp_path: Path) -> None:
    """After a 401 the credentials are reloaded: a rewritten kubeconfig works without a restart."""
    async with connect(fake, tmp_path) as api:
        patch = api_patcher(api)
        fake.rotate_token("token-2")
        with pytest.raises(PublishError, match=r"^PATCH node 'node-a': HTTP 401: Unauthorized$"):
            await patch("node-a", {OBSERVED: "22/TCP"})
        fake.write_kubeconfig(tmp_path / "config", token="token-2")
        await patch("node-a", {OBSERVED: "22/TCP"})
    assert [r.authorization for r in fake.requests][-1] == "Bearer token-2"
    assert node_annotations(fake) == {OBSERVED: "22/TCP"}


async def test_https_api_verified_with_the_kubeconfig_ca(tmp_path: Path) -> None:
    """Over HTTPS the kubeconfig's CA verifies the API server; a different CA is refused."""
    fake = FakeApiServer(token=TOKEN, pki=Pki.create(tmp_path / "pki"))
    fake.put("nodes", {"metadata": {"name": "node-a"}})
    await fake.start()
    try:
        assert fake.url.startswith("https://127.0.0.1:")
        trusted = fake.write_kubeconfig(tmp_path / "ok", token=TOKEN)
        untrusted = fake.write_kubeconfig(tmp_path / "bad", token=TOKEN)
        other_ca = Pki.create(tmp_path / "other-pki").ca_cert
        config = yaml.safe_load(untrusted.read_text())
        config["clusters"][0]["cluster"]["certificate-authority"] = str(other_ca)
        untrusted.write_text(yaml.safe_dump(config))
        async with KubeApi(load_connection(str(trusted))) as api:
            await api_patcher(api)("node-a", {OBSERVED: "443/TCP"})
        async with KubeApi(load_connection(str(untrusted))) as api:
            with pytest.raises(PublishError, match="certificate verify failed") as caught:
                await api_patcher(api)("node-a", {OBSERVED: ""})
        assert str(caught.value).startswith("PATCH node 'node-a': cannot connect to 127.0.0.1:")
    finally:
        await fake.stop()
    assert node_annotations(fake) == {OBSERVED: "443/TCP"}
    assert [r.authorization for r in fake.requests] == [f"Bearer {TOKEN}"]


async def test_a_rotated_client_certificate_is_picked_up(tmp_path: Path) -> None:
    """The API server trusts only a new client CA and the pair is rewritten in place: the
    agent's next PATCH uses the new certificate, without a restart."""
    pki = Pki.create(tmp_path / "pki")
    fake = FakeApiServer(pki=pki)
    fake.put("nodes", {"metadata": {"name": "node-a"}})
    await fake.start()
    try:
        kubeconfig = fake.write_kubeconfig(tmp_path / "config", client_cert=pki.issue_client("a"))
        async with KubeApi(load_connection(str(kubeconfig))) as api:
            patch = api_patcher(api)
            await patch("node-a", {OBSERVED: "22/TCP"})
            new_ca = certs.new_authority("fake-client-ca-2", days=2)
            fake.trust_client_ca(new_ca)
            pki.issue_client("a", authority=new_ca)
            await patch("node-a", {OBSERVED: "22/TCP,443/TCP"})
    finally:
        await fake.stop()
    assert node_annotations(fake) == {OBSERVED: "22/TCP,443/TCP"}


def _add_dead_context(kubeconfig: Path) -> None:
    """Make the current context one whose server refuses connections; `fake` stays available."""
    config: dict[str, Any] = yaml.safe_load(kubeconfig.read_text())
    config["clusters"].append({"name": "dead", "cluster": {"server": "http://127.0.0.1:9"}})
    config["contexts"].append({"name": "dead", "context": {"cluster": "dead", "user": "tester"}})
    config["current-context"] = "dead"
    kubeconfig.write_text(yaml.safe_dump(config))


async def test_agent_command_publishes_to_the_node(fake: FakeApiServer, tmp_path: Path) -> None:
    """`agent --node-name --kubeconfig --context` patches its node and keeps running."""
    kubeconfig = fake.write_kubeconfig(tmp_path / "config", token=TOKEN, context="fake")
    _add_dead_context(kubeconfig)  # so only --context fake reaches the fake
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
        "--context",
        "fake",
        "--proc",
        str(proc),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually(lambda: OBSERVED in node_annotations(fake), within=60)
        assert agent.returncode is None
    finally:
        agent.terminate()
        _, stderr = await agent.communicate()
    assert node_annotations(fake)[OBSERVED] == "80/TCP@169.254.170.23"
    assert [r.authorization for r in fake.requests] == [f"Bearer {TOKEN}"]
    assert f"to {fake.url} (kubeconfig {kubeconfig} (context fake))" in stderr.decode()


def test_agent_command_without_node_name_says_so() -> None:
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


def test_agent_command_without_credentials_says_so(tmp_path: Path) -> None:
    """A kubeconfig that does not exist is one line on stderr and exit 1, not a traceback."""
    missing = tmp_path / "nope"
    result = subprocess.run(
        [sys.executable, "-m", "extender", "agent", "--node-name", "n", "--kubeconfig", missing],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"hostport-extender agent: kubeconfig {missing}: no such file"


def test_once_does_not_load_the_api_client(tmp_path: Path) -> None:
    """`agent --once` needs no cluster and never imports `kubernetes` or the API client."""
    proc = _fake_proc(tmp_path / "proc", [TCP_LISTEN_80])
    script = (
        "import sys\n"
        "from extender.cli import main\n"
        f"code = main(['agent', '--once', '-o', 'annotation', '--proc', {str(proc)!r}])\n"
        "loaded = sorted(m for m in ('kubernetes', 'extender.kube.kubeapi',"
        " 'extender.kube.kubeauth') if m in sys.modules)\n"
        "print(code, loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.stdout.splitlines() == ["80/TCP@169.254.170.23", "0 []"]


async def test_extender_rejects_a_pod_on_what_the_agent_published(
    fake: FakeApiServer, tmp_path: Path
) -> None:
    """The node one agent cycle patched makes the extender reject hostPort 80 on that node."""
    settings = LoopSettings(node="node-a", proc=_fake_proc(tmp_path / "proc", [TCP_LISTEN_80]))

    async def no_wait(seconds: float) -> None:
        del seconds

    async with connect(fake, tmp_path) as api:
        publisher = Publisher("node-a", api_patcher(api), refresh=150)
        await run_loop(settings, publisher, sleep=no_wait, cycles=1)
    cluster = Cluster(Settings())
    cluster.nodes.upsert(fake.get("nodes", "node-a"))
    cluster.nodes.upsert(node("node-b"))
    web_pod = decode_pod(pod("web", ports=[port(8080, 80)]), strict=True)
    reasons = filter_pod(cluster, web_pod, {"node-a", "node-b"}).final()
    assert list(reasons) == ["node-a"]
    assert "observed listening on the host" in reasons["node-a"]
    other = decode_pod(pod("web", ports=[port(8080, 81)]), strict=True)
    assert filter_pod(cluster, other, {"node-a"}).final() == {}
