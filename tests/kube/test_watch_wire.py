"""The watch's own HTTP client against a scripted server on loopback: what reaches the wire, and
every way an answer can go wrong."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
import yaml

from extender.kube.kubeapi import (
    ApiStatusError,
    ApiUnreachableError,
    KubeApi,
    RawEvent,
    WatchStreamError,
)
from extender.kube.kubeauth import load_connection

Script = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]
"""Given the request's head, writes the answer (and closes, or not)."""


class ScriptedServer:
    """A TCP server on 127.0.0.1 that answers each connection with the current script."""

    def __init__(self) -> None:
        self.script: Script | None = None
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        assert self.script is not None
        try:
            await self.script(head, writer)
        finally:
            writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedServer, int]]:
    server = ScriptedServer()
    port = await server.start()
    yield server, port
    await server.stop()


def kubeconfig(tmp_path: Path, server: str, token: str = "t") -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


def event(name: str, rv: int) -> bytes:
    raw = {"type": "ADDED", "object": {"metadata": {"name": name, "resourceVersion": str(rv)}}}
    return orjson.dumps(raw) + b"\n"


async def watch(
    tmp_path: Path, port: int, prefix: str = ""
) -> tuple[list[RawEvent], BaseException | None]:
    """Watch pods through KubeApi; the events handed out and what ended the stream."""
    api = KubeApi(load_connection(kubeconfig(tmp_path, f"http://127.0.0.1:{port}{prefix}")))
    events: list[RawEvent] = []
    async with api:
        stream = await api.open_watch("/api/v1/pods", {"resourceVersion": "5"}, timeout_seconds=9)
        try:
            await stream.run(events.append)
        except Exception as error:
            return events, error
    return events, None


async def test_the_request_carries_the_path_prefix_query_and_headers(
    scripted: tuple[ScriptedServer, int], tmp_path: Path
) -> None:
    """Lines cut anywhere by the chunks arrive whole; the stream ends with its last chunk."""
    server, port = scripted

    async def answer(_head: bytes, writer: asyncio.StreamWriter) -> None:
        body = event("a", 6) + event("b", 7)
        writer.write(OK + chunk(body[:10]) + chunk(body[10:70]))
        await writer.drain()
        writer.write(chunk(body[70:]) + b"0\r\n\r\n")

    server.script = answer
    events, ended = await watch(tmp_path, port, prefix="/k8s/clusters/c-1")
    assert ended is None
    assert [e["object"]["metadata"]["name"] for e in events] == ["a", "b"]
    request = server.requests[0].decode()
    assert request.startswith("GET /k8s/clusters/c-1/api/v1/pods?resourceVersion=5&watch=1&")
    assert "timeoutSeconds=9" in request
    assert f"Host: 127.0.0.1:{port}\r\n" in request
    assert "Authorization: Bearer t\r\n" in request
    assert "Accept-Encoding: identity\r\n" in request
    assert "User-Agent: hostport-extender/" in request


async def test_an_error_answer_raises_its_status(
    scripted: tuple[ScriptedServer, int], tmp_path: Path
) -> None:
    """A 429 with a metav1.Status body and Retry-After, before any event."""
    server, _port = scripted
    status = orjson.dumps(
        {"kind": "Status", "code": 429, "reason": "TooManyRequests", "message": "slow down"}
    )

    async def answer(_head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: %d\r\n\r\n%s"
            % (len(status), status)
        )
        await asyncio.sleep(5)  # the body is complete: nothing waits for the close

    server.script = answer
    with pytest.raises(ApiStatusError) as caught:
        await watch(tmp_path, _port)
    assert (caught.value.status, caught.value.reason, caught.value.retry_after) == (
        429,
        "TooManyRequests",
        2.0,
    )
    assert "slow down" in str(caught.value)


async def test_a_huge_error_body_is_cut_short_not_waited_for(
    scripted: tuple[ScriptedServer, int], tmp_path: Path
) -> None:
    """An error answer announcing 10 MB raises as soon as 64 kB of it say what went wrong."""
    server, _port = scripted

    async def answer(_head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 503 Unavailable\r\nContent-Length: 10000000\r\n\r\n")
        writer.write(b"overloaded " * 10_000)  # 110 kB, then nothing more
        await writer.drain()
        await asyncio.sleep(5)

    server.script = answer
    with pytest.raises(ApiStatusError) as caught:
        await asyncio.wait_for(watch(tmp_path, _port), 2)
    assert caught.value.status == 503
    assert "overloaded" in str(caught.value)


async def test_a_body_in_an_encoding_not_asked_for_is_refused(
    scripted: tuple[ScriptedServer, int], tmp_path: Path
) -> None:
    """The watch asks for identity; a gzip body (a misbehaving proxy) is not read as lines."""
    server, _port = scripted

    async def answer(_head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(OK.replace(b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n"))
        await asyncio.sleep(5)

    server.script = answer
    with pytest.raises(WatchStreamError, match="unasked-for 'gzip' body"):
        await watch(tmp_path, _port)


async def test_a_401_reloads_the_credentials_and_tries_once_more(
    scripted: tuple[ScriptedServer, int], tmp_path: Path
) -> None:
    server, port = scripted

    async def answer(head: bytes, writer: asyncio.StreamWriter) -> None:
        if b"Bearer new" not in head:
            kubeconfig(tmp_path, f"http://127.0.0.1:{port}", token="new")  # rotated meanwhile
            writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
            return
        writer.write(OK + chunk(event("a", 6)) + b"0\r\n\r\n")

    server.script = answer
    events, ended = await watch(tmp_path, port)
    assert ended is None
    assert len(events) == 1
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("tail", "error", "message"),
    [
        (b"", ApiUnreachableError, "closed mid-stream"),  # the connection ends, no last chunk
        (chunk(b'{"type":"ADD') + b"0\r\n\r\n", WatchStreamError, "middle of a line"),
        (chunk(b"garbage\n"), WatchStreamError, "not a watch event"),
        (b"zz\r\n", WatchStreamError, "not a chunk size"),
    ],
)
async def test_a_stream_that_goes_wrong_hands_out_what_came_before_then_raises(
    scripted: tuple[ScriptedServer, int],
    tmp_path: Path,
    tail: bytes,
    error: type[Exception],
    message: str,
) -> None:
    server, port = scripted

    async def answer(_head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(OK + chunk(event("a", 6)))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(tail)
        await writer.drain()

    server.script = answer
    events, ended = await watch(tmp_path, port)
    assert [e["object"]["metadata"]["name"] for e in events] == ["a"]
    assert isinstance(ended, error)
    assert message in str(ended)


async def test_what_the_consumer_raises_ends_the_stream_and_is_raised(
    scripted: tuple[ScriptedServer, int], tmp_path: Path
) -> None:
    server, port = scripted

    async def answer(_head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(OK + chunk(event("a", 6) + event("b", 7)))
        await writer.drain()
        await asyncio.sleep(5)

    server.script = answer
    api = KubeApi(load_connection(kubeconfig(tmp_path, f"http://127.0.0.1:{port}")))
    seen: list[str] = []

    def consume(raw: RawEvent) -> None:
        seen.append(raw["object"]["metadata"]["name"])
        raise ApiStatusError(410, "Expired", "too old")

    async with api:
        stream = await api.open_watch("/api/v1/pods", {}, timeout_seconds=9)
        with pytest.raises(ApiStatusError, match="too old"):
            await asyncio.wait_for(stream.run(consume), 2)
    assert seen == ["a"]


async def test_a_server_that_never_answers_times_out_and_a_closed_port_is_unreachable(
    scripted: tuple[ScriptedServer, int], tmp_path: Path
) -> None:
    server, port = scripted

    async def silent(_head: bytes, _writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    server.script = silent
    api = KubeApi(
        load_connection(kubeconfig(tmp_path, f"http://127.0.0.1:{port}")), request_timeout=0.2
    )
    async with api:
        with pytest.raises(ApiUnreachableError, match="timed out"):
            await api.open_watch("/api/v1/pods", {}, timeout_seconds=9)
    with socket.socket() as unused:  # a port nobody listens on once this closes
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    api = KubeApi(load_connection(kubeconfig(tmp_path, f"http://127.0.0.1:{closed_port}")))
    async with api:
        with pytest.raises(ApiUnreachableError, match=f"cannot connect to 127.0.0.1:{closed_port}"):
            await api.open_watch("/api/v1/pods", {}, timeout_seconds=9)


@pytest.mark.parametrize("with_progress_handler", [True, False])
async def test_skipped_lines_arrive_as_progress_in_order_with_the_others(
    scripted: tuple[ScriptedServer, int], tmp_path: Path, with_progress_handler: bool
) -> None:
    """A line `skippable` answers is not decoded: its resourceVersion goes to `on_skipped`, or
    arrives as a BOOKMARK at it when there is none; the order of all lines is kept."""
    server, port = scripted
    lines = [event("keep-a", 6), event("skip-b", 7), event("skip-c", 8), event("keep-d", 9)]

    async def answer(_head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(OK + chunk(b"".join(lines)) + b"0\r\n\r\n")
        await writer.drain()

    def skippable(line: bytes) -> str | None:
        return (
            orjson.loads(line)["object"]["metadata"]["resourceVersion"] if b"skip" in line else None
        )

    server.script = answer
    api = KubeApi(load_connection(kubeconfig(tmp_path, f"http://127.0.0.1:{port}")))
    seen: list[str] = []

    def on_event(raw: RawEvent) -> None:
        metadata = raw["object"]["metadata"]
        seen.append(f"{raw['type']} {metadata.get('name', '-')} {metadata['resourceVersion']}")

    def on_skipped(resource_version: str) -> None:
        seen.append(f"skipped {resource_version}")

    async with api:
        stream = await api.open_watch("/api/v1/pods", {}, timeout_seconds=9, skippable=skippable)
        await asyncio.wait_for(
            stream.run(on_event, on_skipped if with_progress_handler else None), 2
        )
    middle = (
        ["skipped 7", "skipped 8"] if with_progress_handler else ["BOOKMARK - 7", "BOOKMARK - 8"]
    )
    assert seen == ["ADDED keep-a 6", *middle, "ADDED keep-d 9"]
