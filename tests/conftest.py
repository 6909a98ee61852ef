"""Shared fixtures: where the captured payloads live, and an extender on a real loopback server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from extender.core.cluster import Cluster
from extender.eventloop import LoopFactory, loop_factory
from extender.server.app import create_app
from extender.server.binding import Binder, SnapshotBinder
from extender.server.readiness import AlwaysReady, Readiness
from extender.settings import Settings

# The machines are shared and noisy: Hypothesis' timing checks (a per-example deadline, "input
# generation is slow") measure the neighbours, not the code, and failed a run under load. The
# properties themselves and the example counts are unchanged.
hypothesis.settings.register_profile(
    "shared-machine", deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow]
)
hypothesis.settings.load_profile("shared-machine")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PAYLOADS = SHARED / "payloads"


SERVE_TESTS = ("core", "kube", "server")
"""The tests of the code `hostport-extender serve` runs; the rest (agent, webhook, tools) runs on
asyncio in production."""


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, LoopFactory]:
    """Each async test runs on the loop its code runs on in production: `serve`'s default
    (uvloop, extender/eventloop.py) for the extender's layers, asyncio for the others (the node
    agent's netlink sockets cannot be opened on uvloop)."""
    part = item.path.relative_to(REPO / "tests").parts[0]
    if part in SERVE_TESTS:
        return {"uvloop": loop_factory("uvloop")}
    return {"asyncio": asyncio.new_event_loop}


def start_command(*argv: str) -> subprocess.Popen[str]:
    """`python -m extender ARGV...` as a child process, as an operator or a container runs it:
    stdout and stderr piped as text, unbuffered, from the repository's root."""
    return subprocess.Popen(
        [sys.executable, "-m", "extender", *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


ExtenderClient = TestClient[web.Request, web.Application]
MakeExtender = Callable[..., Awaitable[tuple[ExtenderClient, Cluster]]]


@pytest.fixture
def make_extender(aiohttp_client: Any) -> MakeExtender:
    """Start the extender app on 127.0.0.1 (a real server and client) over a given cluster."""

    async def start(
        nodes: list[dict[str, Any]] | None = None,
        pods: list[dict[str, Any]] | None = None,
        *,
        binder: Binder | None = None,
        readiness: Readiness | None = None,
        **settings: Any,
    ) -> tuple[ExtenderClient, Cluster]:
        config = Settings(**settings)
        cluster = Cluster(config)
        cluster.nodes.replace(nodes or [])
        cluster.pods.replace(pods or [])
        app = create_app(
            cluster,
            config,
            binder=binder or SnapshotBinder(cluster),
            readiness=readiness or AlwaysReady(),
        )
        client: ExtenderClient = await aiohttp_client(app)
        return client, cluster

    return start
