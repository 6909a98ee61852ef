"""Fuzzing the HTTP API: captured requests with random parts replaced, on a real server.

Whatever arrives, the answer is a JSON 200 of the verb's shape or a JSON 4xx, never a 5xx and
never a traceback, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extender.core.cluster import Cluster
from extender.server.app import create_app
from extender.server.binding import SnapshotBinder
from extender.server.readiness import AlwaysReady
from extender.settings import Settings
from tests.conftest import PAYLOADS
from tests.objects import node, pod, port

CAPTURED = [
    json.loads(path.read_text())
    for folder in ("ncc-true", "ncc-false")
    for path in sorted((PAYLOADS / folder).glob("*.json"))
    if (PAYLOADS / folder).is_dir()
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {k: (replaced(v, rest, new) if k == head else v) for k, v in value.items()}
    return [replaced(v, rest, new) if i == head else v for i, v in enumerate(value)]


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    """The extender over a small cluster, served from a thread on 127.0.0.1."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        settings_ = Settings(max_body_bytes=256 * 1024, in_flight_wait_seconds=0.0)
        cluster = Cluster(settings_)
        cluster.nodes.replace(
            [node(f"node-{i}", {"hostports.dev/reserved": "22"}) for i in (1, 2, 3)]
        )
        cluster.pods.replace(
            [
                pod("a", node="node-1", ports=[port(80, 80)]),
                pod("b", node="node-2", host_network=True, ports=[port(9100)]),
            ]
        )
        app = create_app(
            cluster, settings_, binder=SnapshotBinder(cluster), readiness=AlwaysReady()
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["port"] = runner.addresses[0][1]
        state["stop"] = asyncio.Event()
        ready.set()
        await state["stop"].wait()
        await runner.cleanup()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield int(state["port"])
    loop.call_soon_threadsafe(state["stop"].set)
    thread.join(10)


def post(server: int, path: str, body: bytes) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def assert_well_formed(verb: str, status: int, answer: Any) -> None:
    assert status < 500, answer
    if status != 200:
        assert set(answer) == {"Error"}
        assert "Traceback" not in answer["Error"]
    elif verb == "filter":
        assert {"FailedNodes", "FailedAndUnresolvableNodes", "Error"} <= set(answer)
        assert "NodeNames" in answer or "Nodes" in answer
    elif verb == "prioritize":
        assert isinstance(answer, list)
        assert all(set(e) == {"Host", "Score"} and 0 <= e["Score"] <= 10 for e in answer)
    elif verb == "bind":
        assert set(answer) == {"Error"}
    else:
        assert set(answer) == {"NodeNameToMetaVictims"}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_captured_requests_never_break_the_server(server_port: int, data: Any) -> None:
    """Any subtree of a captured request replaced by any JSON: a well-formed JSON answer."""
    call = data.draw(st.sampled_from(CAPTURED))
    request = call["request"]
    target = data.draw(st.sampled_from(list(paths(request))))
    mutated = replaced(request, target, data.draw(json_values))
    status, answer = post(server_port, call["path"], json.dumps(mutated).encode())
    assert_well_formed(call["verb"], status, answer)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["/filter", "/prioritize", "/bind", "/preempt"]))
def test_arbitrary_bytes_get_a_json_error(server_port: int, body: bytes, path: str) -> None:
    """Bytes that are not JSON at all are a 400 with a JSON Error."""
    status, answer = post(server_port, path, body)
    assert status in (200, 400)
    assert_well_formed(path.strip("/"), status, answer)


def test_the_server_still_answers_after_the_fuzzing(server_port: int) -> None:
    """A captured filter call still gets its normal answer."""
    filter_call = next(c for c in CAPTURED if c["verb"] == "filter")
    status, answer = post(server_port, "/filter", json.dumps(filter_call["request"]).encode())
    assert status == 200
    assert answer["Error"] == ""
