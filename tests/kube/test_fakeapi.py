"""The fake API server follows protocol.md's list/watch rules, checked over real HTTP."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from extender.webhook import certs
from tests import fakeapi
from tests.fakeapi import GZIP_THRESHOLD_BYTES, FakeApiServer, Pki, eventually

AUTH = {"Authorization": "Bearer token-1"}


def pod(name: str, *, phase: str = "Running", node: str = "", namespace: str = "ns") -> Any:
    """A minimal pod object."""
    spec: dict[str, Any] = {"containers": [{"name": "c"}]}
    if node:
        spec["nodeName"] = node
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
        "status": {"phase": phase},
    }


@pytest.fixture
async def fake() -> AsyncIterator[FakeApiServer]:
    """A started fake server over plain HTTP."""
    server = FakeApiServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that sends the valid token."""
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


async def get_json(
    http: aiohttp.ClientSession, url: str, **params: str
) -> tuple[int, dict[str, Any]]:
    """GET and decode, whatever the status."""
    async with http.get(url, params=params) as response:
        return response.status, orjson.loads(await response.read())


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    """The next `count` watch events of a stream."""
    events: list[dict[str, Any]] = []
    while len(events) < count:
        line = await asyncio.wait_for(response.content.readline(), 5)
        assert line, "stream ended early"
        events.append(orjson.loads(line))
    return events


async def test_paginated_list_is_a_consistent_snapshot(
    fake: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    """Pages after the first show the state at the first page's RV, even after writes."""
    for i in range(5):
        fake.put("pods", pod(f"p{i}"))
    status, first = await get_json(http, fake.url + "/api/v1/pods", limit="2")
    assert status == 200
    assert [p["metadata"]["name"] for p in first["items"]] == ["p0", "p1"]
    fake.remove("pods", "ns/p3")
    fake.put("pods", pod("p9"))
    names = []
    token = first["metadata"]["continue"]
    while token:
        status, page = await get_json(
            http, fake.url + "/api/v1/pods", limit="2", **{"continue": token}
        )
        assert status == 200
        assert page["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
        names += [p["metadata"]["name"] for p in page["items"]]
        token = page["metadata"].get("continue", "")
    assert names == ["p2", "p3", "p4"]
    assert "kind" not in first["items"][0]


async def test_expired_continue_token_is_410_expired(
    fake: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    """An expired continue token answers 410 with reason Expired."""
    for i in range(3):
        fake.put("pods", pod(f"p{i}"))
    _, first = await get_json(http, fake.url + "/api/v1/pods", limit="1")
    fake.expire_continue_tokens()
    status, body = await get_json(
        http, fake.url + "/api/v1/pods", limit="1", **{"continue": first["metadata"]["continue"]}
    )
    assert (status, body["reason"], body["code"]) == (410, "Expired", 410)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"fieldSelector": "spec.foo=bar"}, "field label not supported: spec.foo"),
        ({"continue": "abc", "resourceVersion": "5"}, "not allowed with continue"),
        ({"watch": "1", "limit": "5"}, "limit is not allowed on a watch"),
        ({"resourceVersion": "x1"}, "invalid resource version"),
    ],
)
async def test_bad_list_parameters_are_400(
    fake: FakeApiServer, http: aiohttp.ClientSession, params: dict[str, str], message: str
) -> None:
    """Requests the real server rejects are rejected with 400 and the reason."""
    status, body = await get_json(http, fake.url + "/api/v1/pods", **params)
    assert status == 400
    assert message in body["message"]


async def test_field_selector_filters_lists(
    fake: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    """`status.phase!=Succeeded,status.phase!=Failed` drops finished pods."""
    fake.put("pods", pod("run"))
    fake.put("pods", pod("done", phase="Succeeded"))
    fake.put("pods", pod("bad", phase="Failed"))
    selector = "status.phase!=Succeeded,status.phase!=Failed"
    _, body = await get_json(http, fake.url + "/api/v1/pods", fieldSelector=selector)
    assert [p["metadata"]["name"] for p in body["items"]] == ["run"]


async def test_watch_streams_changes_after_the_rv_in_order(
    fake: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    """A watch from RV N replays later history, then live events, each with its own RV."""
    fake.put("nodes", {"metadata": {"name": "n1"}})
    _, listed = await get_json(http, fake.url + "/api/v1/nodes")
    rv = listed["metadata"]["resourceVersion"]
    fake.put("nodes", {"metadata": {"name": "n2"}})
    params = {"watch": "1", "resourceVersion": rv}
    async with http.get(fake.url + "/api/v1/nodes", params=params) as response:
        assert response.status == 200
        fake.put("nodes", {"metadata": {"name": "n1", "labels": {"a": "b"}}})
        fake.remove("nodes", "n2")
        events = await read_events(response, 3)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "n2"),
        ("MODIFIED", "n1"),
        ("DELETED", "n2"),
    ]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs)
    assert rvs[0] > int(rv)
    assert events[0]["object"]["kind"] == "Node"


async def test_pod_leaving_the_selector_arrives_as_deleted(
    fake: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    """A pod that finishes is DELETED (old content, new RV); one that starts matching is ADDED."""
    fake.put("pods", pod("p", phase="Running"))
    fake.put("pods", pod("q", phase="Succeeded"))
    rv = str(fake.rv)
    params = {
        "watch": "1",
        "resourceVersion": rv,
        "fieldSelector": "status.phase!=Succeeded,status.phase!=Failed",
    }
    async with http.get(fake.url + "/api/v1/pods", params=params) as response:
        fake.put("pods", pod("p", phase="Succeeded"))
        fake.put("pods", pod("q", phase="Running"))
        events = await read_events(response, 2)
    deleted, added = events
    assert deleted["type"] == "DELETED"
    assert deleted["object"]["status"]["phase"] == "Running"
    assert deleted["object"]["metadata"]["resourceVersion"] == str(int(rv) + 1)
    assert (added["type"], added["object"]["metadata"]["name"]) == ("ADDED", "q")


@pytest.mark.parametrize("style", ["event", "status"])
async def test_watch_from_a_compacted_rv_is_410(http: aiohttp.ClientSession, style: str) -> None:
    """A too-old RV gets 410 Gone: as an ERROR event in a 200 stream, or as the HTTP status."""
    fake = FakeApiServer(history_limit=2, expired_watch_as=style)
    await fake.start()
    try:
        for i in range(4):
            fake.put("nodes", {"metadata": {"name": f"n{i}"}})
        params = {"watch": "1", "resourceVersion": "2"}
        async with http.get(fake.url + "/api/v1/nodes", params=params) as response:
            body = await response.read()
        if style == "status":
            assert response.status == 410
            assert orjson.loads(body)["reason"] == "Expired"
        else:
            assert response.status == 200
            event = orjson.loads(body.splitlines()[0])
            assert event["type"] == "ERROR"
            assert event["object"]["code"] == 410
            assert "too old resource version: 2" in event["object"]["message"]
    finally:
        await fake.stop()


async def test_watch_ends_at_timeout_with_a_bookmark(
    fake: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    """timeoutSeconds closes the stream cleanly; with bookmarks allowed the last event is one."""
    fake.put("nodes", {"metadata": {"name": "n1"}})
    params = {
        "watch": "1",
        "resourceVersion": str(fake.rv),
        "timeoutSeconds": "1",
        "allowWatchBookmarks": "true",
    }
    async with http.get(fake.url + "/api/v1/nodes", params=params) as response:
        body = await asyncio.wait_for(response.read(), 10)
    event = orjson.loads(body)
    assert event == {
        "type": "BOOKMARK",
        "object": {"kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": "2"}},
    }


async def test_watch_without_rv_starts_with_synthetic_added(
    fake: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    """resourceVersion unset: every existing object first arrives as ADDED."""
    fake.put("nodes", {"metadata": {"name": "n1"}})
    async with http.get(fake.url + "/api/v1/nodes", params={"watch": "1"}) as response:
        (event,) = await read_events(response, 1)
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "n1")


async def test_break_streams_cuts_the_connection(
    fake: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    """break_streams aborts mid-line: the client sees a payload error, not a clean end."""
    params = {"watch": "1", "resourceVersion": str(fake.rv)}
    async with http.get(fake.url + "/api/v1/nodes", params=params) as response:
        await eventually(lambda: fake.open_watches == 1)
        fake.break_streams(partial_line=b'{"type":"ADD')
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(response.read(), 5)


async def test_tokens_are_checked_and_rotate(
    fake: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    """A missing, wrong or rotated-out token gets 401; the new one works."""
    async with aiohttp.ClientSession() as anonymous:
        status, body = await get_json(anonymous, fake.url + "/api/v1/nodes")
        assert (status, body["reason"]) == (401, "Unauthorized")
    assert (await get_json(http, fake.url + "/api/v1/nodes"))[0] == 200
    fake.rotate_token("token-2")
    assert (await get_json(http, fake.url + "/api/v1/nodes"))[0] == 401
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer token-2"}) as rotated:
        assert (await get_json(rotated, fake.url + "/api/v1/nodes"))[0] == 200


async def test_client_certificate_authenticates_over_tls(tmp_path: Path) -> None:
    """Over TLS a certificate signed by the fake's CA is accepted without a token."""
    pki = Pki.create(tmp_path)
    fake = FakeApiServer(pki=pki)
    await fake.start()
    try:
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        async with (
            aiohttp.ClientSession() as anonymous,
            anonymous.get(fake.url + "/api/v1/nodes", ssl=context) as response,
        ):
            assert response.status == 401
        context.load_cert_chain(*pki.issue_client("alice"))
        async with (
            aiohttp.ClientSession() as client,
            client.get(fake.url + "/api/v1/nodes", ssl=context) as response,
        ):
            assert response.status == 200
    finally:
        await fake.stop()


async def test_a_rotated_client_ca_rejects_old_certificates_per_request(tmp_path: Path) -> None:
    """After trust_client_ca only the new CA's certificates pass; the old ones get 401."""
    pki = Pki.create(tmp_path)
    fake = FakeApiServer(pki=pki)
    await fake.start()
    try:
        old = ssl.create_default_context(cafile=str(pki.ca_cert))
        old.load_cert_chain(*pki.issue_client("alice"))
        new_ca = certs.new_authority("fake-client-ca-2", days=2)
        new = ssl.create_default_context(cafile=str(pki.ca_cert))
        new.load_cert_chain(*pki.issue_client("alice", authority=new_ca, name="alice-2"))
        async with aiohttp.ClientSession() as client:
            statuses = []
            for context in (old, old, new):
                async with client.get(fake.url + "/api/v1/nodes", ssl=context) as response:
                    statuses.append(response.status)
                fake.trust_client_ca(new_ca)
        assert statuses == [200, 401, 200]
    finally:
        await fake.stop()


async def test_a_stall_holds_requests_and_watches_until_resume(
    fake: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    """stall(): the watch writes half a line then nothing, a new request is not answered."""
    params = {"watch": "1", "resourceVersion": str(fake.rv)}
    async with http.get(fake.url + "/api/v1/nodes", params=params) as response:
        fake.stall(partial_line=b'{"type":"ADD')
        fake.put("nodes", {"metadata": {"name": "n1"}})
        assert await asyncio.wait_for(response.content.read(12), 5) == b'{"type":"ADD'
        held = asyncio.ensure_future(get_json(http, fake.url + "/api/v1/nodes"))
        done, _ = await asyncio.wait(
            [held, asyncio.ensure_future(response.content.read(1))], timeout=0.5
        )
        assert not done
        fake.resume()
        status, listed = await asyncio.wait_for(held, 5)
        assert (status, [n["metadata"]["name"] for n in listed["items"]]) == (200, ["n1"])


async def test_injected_429_carries_retry_after(
    fake: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    """inject_error answers the next matching request only, with a Status body."""
    fake.inject_error(429, retry_after=3)
    async with http.get(fake.url + "/api/v1/nodes") as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "3"
    assert (await get_json(http, fake.url + "/api/v1/nodes"))[0] == 200


async def test_binding_sets_node_and_emits_modified(
    fake: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    """A Binding with the right UID binds the pod once; the watch shows the MODIFIED pod."""
    uid = fake.put("pods", pod("p"))["metadata"]["uid"]
    url = fake.url + "/api/v1/namespaces/ns/pods/p/binding"

    def binding(node: str, uid: str) -> bytes:
        return orjson.dumps(
            {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": "p", "namespace": "ns", "uid": uid},
                "target": {"kind": "Node", "name": node},
            }
        )

    params = {"watch": "1", "resourceVersion": str(fake.rv)}
    async with http.get(fake.url + "/api/v1/pods", params=params) as watch:
        async with http.post(url, data=binding("n1", "not-the-uid")) as response:
            assert response.status == 409
            assert "Precondition failed" in (await response.json())["message"]
        async with http.post(url, data=binding("n1", uid)) as response:
            assert response.status == 201
        (event,) = await read_events(watch, 1)
    assert (event["type"], event["object"]["spec"]["nodeName"]) == ("MODIFIED", "n1")
    async with http.post(url, data=binding("n2", uid)) as response:
        assert response.status == 409
        assert 'already assigned to node "n1"' in (await response.json())["message"]
    missing = fake.url + "/api/v1/namespaces/ns/pods/nope/binding"
    async with http.post(missing, data=binding("n1", uid).replace(b'"p"', b'"nope"')) as response:
        assert response.status == 404


async def test_node_annotation_merge_patch(
    fake: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    """Merge patches set and delete annotations, check resourceVersion, refuse other formats."""
    fake.put("nodes", {"metadata": {"name": "n1", "annotations": {"keep": "1", "drop": "2"}}})
    url = fake.url + "/api/v1/nodes/n1"
    merge = {"Content-Type": "application/merge-patch+json"}
    patch = {"metadata": {"annotations": {"drop": None, "new": "3"}}}
    async with http.patch(url, data=orjson.dumps(patch), headers=merge) as response:
        assert response.status == 200
    assert fake.get("nodes", "n1")["metadata"]["annotations"] == {"keep": "1", "new": "3"}
    stale = {"metadata": {"resourceVersion": "1", "annotations": {"x": "y"}}}
    async with http.patch(url, data=orjson.dumps(stale), headers=merge) as response:
        assert response.status == 409
    json_patch = {"Content-Type": "application/json-patch+json"}
    async with http.patch(url, data=b"[]", headers=json_patch) as response:
        assert response.status == 415
    spec_patch = {"spec": {"unschedulable": True}}
    async with http.patch(url, data=orjson.dumps(spec_patch), headers=merge) as response:
        assert response.status == 422


async def _read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One chunk of a chunked HTTP body, read off the wire."""
    size = int((await asyncio.wait_for(reader.readline(), 5)).strip(), 16)
    data = await reader.readexactly(size)
    assert await reader.readexactly(2) == b"\r\n"
    return data


async def test_events_queued_together_are_written_in_one_chunk(fake: FakeApiServer) -> None:
    """As the real server flushes only once its event channel is empty, changes made at one
    moment reach the watcher in one HTTP chunk, and a later change in a chunk of its own."""
    fake.put("pods", pod("before"))
    rv = fake.rv
    host, port = fake.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"GET /api/v1/pods?watch=1&resourceVersion={rv} HTTP/1.1\r\nHost: {host}\r\n"
            "Authorization: Bearer token-1\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"chunked" in head.lower()
        await eventually(lambda: fake.open_watches == 1)
        for index in range(3):
            fake.put("pods", pod(f"together-{index}"))
        together = await _read_chunk(reader)
        fake.put("pods", pod("later"))
        later = await _read_chunk(reader)
    finally:
        writer.close()
    names = [orjson.loads(line)["object"]["metadata"]["name"] for line in together.splitlines()]
    assert names == ["together-0", "together-1", "together-2"]
    assert [orjson.loads(line)["object"]["metadata"]["name"] for line in later.splitlines()] == [
        "later"
    ]


async def test_a_large_list_is_gzipped_for_a_client_that_accepts_gzip(fake: FakeApiServer) -> None:
    """As kube-apiserver does (APIResponseCompression): over 128 KiB, gzip level 1, only when
    asked; a small list and a client asking identity get the bytes as they are."""
    for index in range(400):  # ~0.5 KB each: the whole list is over the threshold, 5 are not
        fake.put("pods", pod(f"p{index}", node="n1") | {"spec": {"hostname": "x" * 400}})
    url = f"{fake.url}/api/v1/pods"
    for accept, limit, compressed in (
        ("gzip, deflate", "", True),
        ("gzip", "5", False),  # a small page
        ("identity", "", False),
        ("deflate", "", False),
    ):
        headers = {**AUTH, "Accept-Encoding": accept}
        async with aiohttp.ClientSession(headers=headers, auto_decompress=False) as raw:
            params = {"limit": limit} if limit else {}
            async with raw.get(url, params=params) as response:
                assert response.status == 200
                body = await response.read()
                assert (response.headers.get("Content-Encoding") == "gzip") is compressed, accept
                if compressed:
                    assert response.headers["Vary"] == "Accept-Encoding"
                    body = gzip.decompress(body)
                    assert len(body) > GZIP_THRESHOLD_BYTES
                listed = orjson.loads(body)
                assert len(listed["items"]) == (int(limit) if limit else 400)


async def test_a_paused_client_gets_its_held_events_in_order_while_others_keep_watching(
    fake: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    """pause_watches(agent) holds back only that client's watches; the others see each change
    at once, and on resume the held client gets exactly what it missed, in order, once."""
    fake.put("pods", pod("p"))
    params = {"watch": "1", "resourceVersion": str(fake.rv)}
    held_agent = {"User-Agent": "hostport-extender/0.1.0 (serve)"}
    other_agent = {"User-Agent": "kube-scheduler/v1.36.0 (linux/amd64)"}
    url = fake.url + "/api/v1/pods"
    async with (
        http.get(url, params=params, headers=held_agent) as held,
        http.get(url, params=params, headers=other_agent) as other,
    ):
        await eventually(lambda: fake.open_watches == 2)
        fake.pause_watches("hostport-extender/")
        fake.put("pods", pod("p", node="n1"))
        fake.remove("pods", "ns/p")
        seen = await read_events(other, 2)
        assert [e["type"] for e in seen] == ["MODIFIED", "DELETED"]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(held.content.readline(), 0.3)
        fake.resume_watches()
        fake.put("pods", pod("q"))
        missed = await read_events(held, 3)
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in missed] == [
            ("MODIFIED", "p"),
            ("DELETED", "p"),
            ("ADDED", "q"),
        ]
        assert [e["object"]["metadata"]["resourceVersion"] for e in missed[:2]] == [
            e["object"]["metadata"]["resourceVersion"] for e in seen
        ]
        assert (await read_events(other, 1))[0]["object"]["metadata"]["name"] == "q"
    assert {r.user_agent for r in fake.requests} == {
        held_agent["User-Agent"],
        other_agent["User-Agent"],
    }


async def test_a_change_is_encoded_once_for_every_watcher(
    fake: FakeApiServer, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like the real server's cachingObject: three watches of the same pods get the same line,
    serialized once; a watch whose selector turns the change into a DELETED gets its own."""
    encoded: list[str] = []
    real = fakeapi._encode_event

    def counting(kind: str, obj: Any) -> bytes:
        encoded.append(kind)
        return real(kind, obj)

    monkeypatch.setattr(fakeapi, "_encode_event", counting)
    fake.put("pods", pod("p", phase="Running"))
    params = {"watch": "1", "resourceVersion": str(fake.rv)}
    running = {**params, "fieldSelector": "status.phase!=Succeeded"}
    url = fake.url + "/api/v1/pods"
    async with (
        http.get(url, params=params) as first,
        http.get(url, params=params) as second,
        http.get(url, params=params) as third,
        http.get(url, params=running) as selected,
    ):
        await eventually(lambda: fake.open_watches == 4)
        fake.put("pods", pod("p", phase="Succeeded"))
        lines = [await asyncio.wait_for(r.content.readline(), 5) for r in (first, second, third)]
        gone = orjson.loads(await asyncio.wait_for(selected.content.readline(), 5))
    assert lines[0] == lines[1] == lines[2]
    assert orjson.loads(lines[0])["type"] == "MODIFIED"
    assert gone["type"] == "DELETED"
    assert sorted(encoded) == ["DELETED", "MODIFIED"]
