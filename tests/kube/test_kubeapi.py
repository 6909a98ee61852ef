"""The API client: typed errors, pagination, watch line handling, binding and node patches."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from extender import __version__
from extender.kube import slices
from extender.kube.kubeapi import (
    ApiStatusError,
    ApiUnreachableError,
    KubeApi,
    RawEvent,
    WatchStream,
    WatchStreamError,
)
from extender.kube.kubeauth import load_connection
from tests.fakeapi import FakeApiServer
from tests.objects import pod, port


@pytest.fixture
async def fake() -> AsyncIterator[FakeApiServer]:
    """A fake API server with two nodes, over plain HTTP."""
    server = FakeApiServer(token="t")
    for name in ("n1", "n2"):
        server.put("nodes", {"metadata": {"name": name, "annotations": {"a": "1"}}})
    await server.start()
    yield server
    await server.stop()


def connect(fake: FakeApiServer, tmp_path: Path, **options: Any) -> KubeApi:
    """A client for `fake`, configured through a kubeconfig file."""
    kubeconfig = fake.write_kubeconfig(tmp_path / "config", token="t")
    return KubeApi(load_connection(str(kubeconfig)), **options)


async def test_list_all_follows_continue_tokens(fake: FakeApiServer, tmp_path: Path) -> None:
    """Pages of one item still yield every item and the list's resourceVersion."""
    async with connect(fake, tmp_path) as api:
        items, rv = await api.list_all("/api/v1/nodes", limit=1)
    assert [item["metadata"]["name"] for item in items] == ["n1", "n2"]
    assert rv == str(fake.rv)
    assert len([r for r in fake.requests if r.path == "/api/v1/nodes"]) == 2


async def test_list_all_drops_the_items_keep_refuses_without_decoding_them(
    fake: FakeApiServer, tmp_path: Path
) -> None:
    """`keep` sees each item's raw bytes; refused ones never reach the caller (pages of 1 and 3)."""
    fake.put("pods", pod("web", node="n1", ports=[port(80, 80)]))
    fake.put("pods", pod("batch", node="n1"))
    fake.put("pods", pod("dns", node="n2", host_network=True))
    seen: list[bytes] = []

    def keep(raw: bytes) -> bool:
        seen.append(raw)
        return b"host" in raw

    async with connect(fake, tmp_path) as api:
        for limit in (1, 3):
            seen.clear()
            items, _rv = await api.list_all("/api/v1/pods", limit=limit, keep=keep)
            assert sorted(item["metadata"]["name"] for item in items) == ["dns", "web"]
            assert len(seen) == 3
            assert any(b'"batch"' in raw for raw in seen)


async def test_a_page_of_refused_items_still_lets_other_tasks_run_between_them(
    fake: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Items `keep` refuses are not decoded, but each is still work: with every item a slice
    of its own, a request-like task runs at least once per item of a one-page list."""
    monkeypatch.setattr(slices, "SLICE_SECONDS", 0.0)
    for i in range(200):
        fake.put("pods", pod(f"batch-{i}", node="n1"))
    turns = 0
    listing = True

    async def request() -> None:
        nonlocal turns
        while listing:
            turns += 1
            await asyncio.sleep(0)

    async with connect(fake, tmp_path) as api:
        probe = asyncio.create_task(request())
        items, _rv = await api.list_all("/api/v1/pods", limit=500, keep=lambda raw: False)
        listing = False
        await probe
    assert items == []
    assert turns >= 200


async def test_list_converted_keeps_what_convert_returns_as_each_page_arrives(
    fake: FakeApiServer, tmp_path: Path
) -> None:
    """Each item is converted before the next page is asked for; None drops it."""
    for name in ("a", "b", "batch", "c", "d"):
        fake.put("pods", pod(name, node="n1", ports=[port(80, 80)]))
    converted: list[tuple[str, int]] = []

    def convert(raw: dict[str, Any]) -> str | None:
        name: str = raw["metadata"]["name"]
        pages_asked = len([r for r in fake.requests if r.path == "/api/v1/pods"])
        converted.append((name, pages_asked))
        return None if name == "batch" else name.upper()

    async with connect(fake, tmp_path) as api:
        items, rv = await api.list_converted("/api/v1/pods", convert, limit=2)
    assert items == ["A", "B", "C", "D"]
    assert rv == str(fake.rv)
    assert converted == [("a", 1), ("b", 1), ("batch", 2), ("c", 2), ("d", 3)]


async def test_list_converted_converts_a_page_that_must_be_decoded_whole(
    fake: FakeApiServer, tmp_path: Path
) -> None:
    """An item that opens with other keys than the first (so the page cannot be cut exactly)
    makes the page decode whole; its items are converted all the same, once each."""
    fake.put("pods", pod("a", node="n1"))
    shuffled = pod("b", node="n1")
    fake.put("pods", {"spec": shuffled["spec"], **shuffled})
    converted: list[str] = []

    def convert(raw: dict[str, Any]) -> str:
        converted.append(raw["metadata"]["name"])
        return str(raw["metadata"]["name"])

    async with connect(fake, tmp_path) as api:
        items, _rv = await api.list_converted("/api/v1/pods", convert, limit=10)
    assert items == ["a", "b"]
    assert converted == ["a", "b"]


async def test_a_converted_list_does_not_hold_the_raw_items(
    fake: FakeApiServer, tmp_path: Path
) -> None:
    """Listing 2,000 pods (10 pages) into their UIDs peaks at a fraction of the memory that
    keeping the decoded items does: only one raw item is alive at a time (and one page of
    bytes, the fake's own included)."""
    annotations = {f"example.com/note-{index}": f"value-{index}" for index in range(20)}
    for index in range(2000):
        fake.put("pods", pod(f"web-{index}", node="n1", annotations=annotations))
    peaks: dict[str, int] = {}
    async with connect(fake, tmp_path) as api:
        tracemalloc.start()
        try:
            items, _rv = await api.list_all("/api/v1/pods", limit=200)
            peaks["all"] = tracemalloc.get_traced_memory()[1]
            del items
            tracemalloc.reset_peak()
            uids, _rv = await api.list_converted(
                "/api/v1/pods", lambda raw: raw["metadata"]["uid"], limit=200
            )
            peaks["converted"] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert len(uids) == 2000
    assert peaks["converted"] < peaks["all"] / 4, peaks


@pytest.mark.parametrize(
    ("compression", "asked", "gzipped"), [(True, "gzip", True), (False, "identity", False)]
)
async def test_a_large_list_comes_gzipped_only_when_asked(
    fake: FakeApiServer, tmp_path: Path, compression: bool, asked: str, gzipped: bool
) -> None:
    """A 600-pod list (~250 KB, over the API server's 128 KiB threshold) arrives whole either
    way; the client asks for gzip or for identity, and the API server answers accordingly."""
    for index in range(600):
        fake.put("pods", pod(f"web-{index}", node="n1", ports=[port(8000 + index, 8000 + index)]))
    async with connect(fake, tmp_path, compression=compression) as api:
        items, _rv = await api.list_all("/api/v1/pods", limit=1000)
    assert len(items) == 600
    ports = sorted(item["spec"]["containers"][0]["ports"][0]["hostPort"] for item in items)
    assert ports == list(range(8000, 8600))
    listed = [r for r in fake.requests if r.path == "/api/v1/pods"]
    assert [r.accept_encoding for r in listed] == [asked]
    assert fake.gzipped_answers == (1 if gzipped else 0)


async def test_status_errors_carry_status_and_reason(fake: FakeApiServer, tmp_path: Path) -> None:
    """An error answer becomes ApiStatusError with the Status fields and Retry-After."""
    fake.inject_error(429, retry_after=7)
    async with connect(fake, tmp_path) as api:
        with pytest.raises(ApiStatusError) as caught:
            await api.list_all("/api/v1/nodes")
        assert (caught.value.status, caught.value.reason) == (429, "TooManyRequests")
        assert caught.value.retry_after == 7
        with pytest.raises(ApiStatusError) as caught:
            await api.create_binding("default", "ghost", "uid", "n1")
        assert caught.value.status == 404
        assert caught.value.message == 'pods "ghost" not found'


async def test_a_refused_connection_is_unreachable(fake: FakeApiServer, tmp_path: Path) -> None:
    """No server: ApiUnreachableError naming host and port, no aiohttp object reprs."""
    api = connect(fake, tmp_path)
    await fake.stop()
    async with api:
        with pytest.raises(ApiUnreachableError) as caught:
            await api.list_all("/api/v1/nodes")
    assert f"cannot connect to 127.0.0.1:{fake.port}" in str(caught.value)
    assert "object at 0x" not in str(caught.value)


async def test_watch_line_longer_than_the_limit_fails(fake: FakeApiServer, tmp_path: Path) -> None:
    """A line beyond max_line_bytes ends the stream with WatchStreamError, not a memory blow-up."""
    async with connect(fake, tmp_path, max_line_bytes=1000) as api:
        stream = await api.open_watch("/api/v1/nodes", {"resourceVersion": "1"}, timeout_seconds=5)
        fake.put("nodes", {"metadata": {"name": "big", "annotations": {"x": "y" * 5000}}})
        with pytest.raises(WatchStreamError, match="exceeds 1000 bytes"):
            await drain(stream)


async def drain(stream: WatchStream) -> list[RawEvent]:
    """Every event of a stream, until it ends."""
    events: list[RawEvent] = []
    async with stream:
        await stream.run(events.append)
    return events


async def test_patch_node_metadata_merges_annotations(fake: FakeApiServer, tmp_path: Path) -> None:
    """A merge patch adds and removes annotations and returns the updated node."""
    async with connect(fake, tmp_path) as api:
        patch = {"metadata": {"annotations": {"a": None, "hostports.dev/observed": "80/TCP"}}}
        node = await api.patch_node_metadata("n1", patch)
    assert node["metadata"]["annotations"] == {"hostports.dev/observed": "80/TCP"}
    assert fake.get("nodes", "n1")["metadata"]["annotations"] == {
        "hostports.dev/observed": "80/TCP"
    }


async def test_401_reloads_credentials_once(fake: FakeApiServer, tmp_path: Path) -> None:
    """After a 401 the client reloads the kubeconfig and retries exactly once."""
    async with connect(fake, tmp_path) as api:
        fake.rotate_token("t2")
        with pytest.raises(ApiStatusError) as caught:
            await api.list_all("/api/v1/nodes")
        assert caught.value.status == 401
        assert len(fake.requests) == 2
        fake.write_kubeconfig(tmp_path / "config", token="t2")
        items, _ = await api.list_all("/api/v1/nodes")
    assert len(items) == 2


@pytest.mark.parametrize(
    ("component", "agent"),
    [
        ("serve", f"hostport-extender/{__version__} (serve)"),
        ("", f"hostport-extender/{__version__}"),
    ],
)
async def test_every_request_names_the_extender_and_its_command(
    fake: FakeApiServer, tmp_path: Path, component: str, agent: str
) -> None:
    """Lists, watches and bindings say who sends them (what an API server's audit log and
    request metrics record), not aiohttp's default `Python/3.11 aiohttp/...`."""
    fake.put("pods", pod("web", ports=[port(80, 80)]))
    async with connect(fake, tmp_path, component=component) as api:
        _items, rv = await api.list_all("/api/v1/pods", limit=10)
        stream = await api.open_watch("/api/v1/pods", {"resourceVersion": rv}, timeout_seconds=1)
        fake.put("pods", pod("web", ports=[port(80, 80)], annotations={"changed": "yes"}))
        await drain(stream)  # the server ends it after its timeoutSeconds
        uid = fake.get("pods", "default/web")["metadata"]["uid"]
        await api.create_binding("default", "web", uid, "n1")
    assert [r.user_agent for r in fake.requests] == [agent] * 3
