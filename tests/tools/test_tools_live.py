"""The tools against a live cluster: the fake API server over TLS, the official kubeconfig
loader, the real command in its own process. Live answers must equal the snapshot's."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from extender.cli import main
from extender.core.cluster import Cluster
from extender.errors import ExtenderError
from extender.kube.kubeauth import load_connection
from extender.server.app import create_app
from extender.server.live import Live
from extender.settings import Settings
from extender.tools.source import list_live
from tests.conftest import REPO
from tests.fakeapi import FakeApiServer, eventually
from tests.objects import pod, port
from tests.truth import sample_api_server

SAMPLES = REPO / "config" / "samples"
SAMPLE = str(SAMPLES / "cluster.yaml")
DAEMONSET = str(SAMPLES / "eks-pod-identity-agent-daemonset.yaml")


@pytest.fixture
async def cluster_api(tmp_path: Path) -> AsyncIterator[tuple[FakeApiServer, Path]]:
    """The sample cluster served by a fake API server over TLS, and a kubeconfig for it."""
    fake = sample_api_server(tmp_path / "pki", token="operator-token")
    await fake.start()
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", token="operator-token")
    try:
        yield fake, kubeconfig
    finally:
        await fake.stop()


async def run(*argv: str) -> tuple[int, str, str]:
    """The real command in a child process (the fake server keeps serving on this loop)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "extender", *argv,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def snapshot_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code = main([*argv, "--snapshot", SAMPLE, "-o", "json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "argv",
    [
        ["audit"],
        ["who", "ip-10-0-1-13.ec2.internal"],
        ["check", "-f", DAEMONSET],
    ],
    ids=["audit", "who", "check"],
)
async def test_live_answers_equal_the_snapshot(
    argv: list[str],
    cluster_api: tuple[FakeApiServer, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Listing the cluster through the API gives the same document, and exit code, as the dump
    of the same objects: the evicted pod's history, labels and taints all come through."""
    _, kubeconfig = cluster_api
    code, out, err = await run(*argv, "--kubeconfig", str(kubeconfig), "-o", "json")
    assert err == ""
    assert (code, json.loads(out)) == snapshot_json(argv, capsys)


async def test_live_with_a_context(
    cluster_api: tuple[FakeApiServer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`--context` picks the kubeconfig context; an unknown one is one clear line."""
    _, kubeconfig = cluster_api
    code, out, _ = await run("audit", "--kubeconfig", str(kubeconfig), "--context", "fake")
    assert code == 1
    assert out.startswith("5 nodes, 2 conflicts, 2 risks")
    code, out, err = await run("audit", "--kubeconfig", str(kubeconfig), "--context", "prod")
    assert (code, out) == (2, "")
    assert err.startswith("hostport-extender: error: ")
    assert "prod" in err
    assert err.count("\n") == 1


async def test_unreachable_cluster_is_one_line(cluster_api: tuple[FakeApiServer, Path]) -> None:
    """With the API server down, the tools say which server they could not list, exit 2."""
    fake, kubeconfig = cluster_api
    await fake.go_down()
    code, out, err = await run("who", "n1", "--kubeconfig", str(kubeconfig))
    assert (code, out) == (2, "")
    assert err.startswith(f"hostport-extender: error: cannot list the cluster at {fake.url}: ")
    assert err.count("\n") == 1


async def test_rejected_credentials_are_one_line(
    cluster_api: tuple[FakeApiServer, Path], tmp_path: Path
) -> None:
    """A token the server refuses is a 401 named in one line, not a traceback."""
    fake, _ = cluster_api
    wrong = fake.write_kubeconfig(tmp_path / "wrong", token="not-the-token")
    code, _, err = await run("audit", "--kubeconfig", str(wrong))
    assert code == 2
    assert err.startswith(f"hostport-extender: error: cannot list the cluster at {fake.url}: 401")
    assert err.count("\n") == 1


async def test_a_list_cut_by_410_is_restarted(cluster_api: tuple[FakeApiServer, Path]) -> None:
    """A 410 Gone mid-list restarts the list; other API errors are reported as they are."""
    fake, kubeconfig = cluster_api
    connection = load_connection(str(kubeconfig))
    fake.inject_error(410, times=2, path="/api/v1/pods")
    objects = await list_live(connection)
    assert (len(objects.nodes), len(objects.pods)) == (5, 16)
    fake.inject_error(410, times=3, path="/api/v1/pods")
    with pytest.raises(ExtenderError, match="410"):
        await list_live(connection)
    fake.inject_error(500, path="/api/v1/nodes")
    with pytest.raises(ExtenderError, match=r"cannot list the cluster at .*: 500 InternalError"):
        await list_live(connection)


async def test_debug_views_follow_the_live_cache(
    cluster_api: tuple[FakeApiServer, Path], aiohttp_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The running extender in live mode serves `who` from its synced cache, and a pod that
    appears in the cluster shows up in `/debug/conflicts` once the watch delivers it."""
    fake, kubeconfig = cluster_api
    settings = Settings()
    cluster = Cluster(settings)
    live = Live(load_connection(str(kubeconfig)), cluster)
    app = create_app(cluster, settings, binder=live.binder, readiness=live.readiness)
    app.cleanup_ctx.append(live.run_informers)
    client = await aiohttp_client(app)
    await eventually(lambda: live.readiness.check() is None)
    response = await client.get("/debug/nodes/ip-10-0-1-13.ec2.internal")
    _, expected = snapshot_json(["who", "ip-10-0-1-13.ec2.internal"], capsys)
    assert await response.json() == expected

    squatter = pod(
        "squatter", namespace="web", node="ip-10-0-1-13.ec2.internal", ports=[port(80, 80)]
    )
    del squatter["metadata"]["uid"]
    fake.put("pods", squatter)
    await eventually(lambda: "web/squatter" in {p.key for p in cluster.pods_by_uid.values()})
    report = await (await client.get("/debug/conflicts")).json()
    on_13 = {
        (c["address"], c["claims"][0]["pod"], c["claims"][1]["pod"])
        for c in report["conflicts"]
        if c["node"] == "ip-10-0-1-13.ec2.internal"
    }
    assert on_13 == {
        ("169.254.170.23", "web/squatter", "kube-system/eks-pod-identity-agent-q9d4s"),
        ("fd00:ec2::23", "web/squatter", "kube-system/eks-pod-identity-agent-q9d4s"),
    }
