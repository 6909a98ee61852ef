"""One WATCH on a connection of its own, read in the transport's callback.

Most watch events arrive alone, so what a process pays per wake-up is most of what a watch
costs. Read through aiohttp's stream reader, a future, a task and two async generators, a
skippable line cost ~190-250 us of CPU woken on the busy benchmark's 2 shared cores, against
~110-160 us for the same line handled in the protocol's `data_received` (informers alone in a
process, side by side, schedstat CPU). So the watch has its own small HTTP/1.1 client: the
request is written once, the response unframed by httpwire.ResponseReader, and each line skipped
(`skippable`) or decoded and handed to the consumer right there, in slices of SLICE_SECONDS with
reading paused between them so requests run in between. Everything else (lists, bindings,
patches) stays on aiohttp (kubeapi.py), which also authenticates the same way.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import quote, urlencode, urlsplit

import orjson

from extender.kube import slices
from extender.kube.apierrors import (
    ApiStatusError,
    ApiUnreachableError,
    KubeApiError,
    WatchStreamError,
    cannot_connect,
    describe,
    status_error,
)
from extender.kube.httpwire import HttpWireError, ResponseHead, ResponseReader

RawEvent = dict[str, Any]
"""One watch event: `{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR", "object": {...}}`."""

LineFilter = Callable[[bytes], str | None]
"""Given a raw watch line: its resourceVersion if it can be skipped undecoded, else None."""

EventHandler = Callable[[RawEvent], None]

ProgressHandler = Callable[[str], None]
"""Given the resourceVersion of a line `skippable` answered: the watch got that far."""

MAX_ERROR_BODY = 64 * 1024
"""Bytes of an error answer's body kept (a metav1.Status is well under 1 kB)."""


class WatchStream:
    """The events of one accepted watch; `run` hands them over until the stream ends.

    A line that `skippable` answers with a resourceVersion is not decoded: it arrives as
    progress to that version (`on_skipped`, or a BOOKMARK at it: no object to apply). Use it
    as a context manager (or call `close`) so the connection is closed whatever happens.
    """

    def __init__(self, protocol: _WatchProtocol, head: ResponseHead) -> None:
        self._protocol = protocol
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers

    async def run(self, on_event: EventHandler, on_skipped: ProgressHandler | None = None) -> None:
        """Call `on_event` for each event, in order, until the server ends the stream cleanly;
        `on_skipped` (if given) for each line `skippable` answered, instead of a BOOKMARK event.

        Both run inside the connection's callback: they must not block; what they raise ends
        the stream and is raised here. A stream cut short raises ApiUnreachableError, a line
        that is not a watch event WatchStreamError.
        """
        if on_skipped is None:
            on_skipped = _as_bookmark(on_event)
        try:
            await self._protocol.deliver_to(on_event, on_skipped)
        finally:
            self.close()

    def error(self) -> ApiStatusError:
        """The error an answer other than 200 stands for (`open_stream` read its body); closes
        the connection."""
        self.close()
        body = self._protocol.error_body()
        return status_error(self.status, self.reason, body, self.headers.get("retry-after", ""))

    def close(self) -> None:
        self._protocol.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


async def open_stream(
    server: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    *,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    connect_seconds: float,
    max_line_bytes: int,
    skippable: LineFilter | None,
) -> WatchStream:
    """Connect to `server` (a URL, maybe with a path prefix), send the WATCH and wait for the
    answer's head. An error answer is returned too, its body read (`WatchStream.error`); a
    failure to connect or to get a head within `connect_seconds` raises ApiUnreachableError (an
    ssl.SSLError as such, so the caller can reload its credentials)."""
    url = urlsplit(server)
    https = url.scheme == "https"
    host = url.hostname or ""
    port = url.port or (443 if https else 80)
    loop = asyncio.get_running_loop()
    protocol = _WatchProtocol(path, max_line_bytes, skippable, loop)
    try:
        async with asyncio.timeout(connect_seconds):
            await loop.create_connection(
                lambda: protocol,
                host,
                port,
                ssl=(ssl_context or ssl.create_default_context()) if https else None,
                server_hostname=(server_hostname or host) if https else None,
            )
            target = f"{url.path.rstrip('/')}{path}?{urlencode(query, quote_via=quote)}"
            lines = [f"GET {target} HTTP/1.1", f"Host: {url.netloc}"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            protocol.send("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n")
            head = await protocol.head
            stream = WatchStream(protocol, head)
            if head.status != 200:
                await protocol.error_body_read
    except ssl.SSLError:
        protocol.close()
        raise
    except TimeoutError:
        protocol.close()
        raise ApiUnreachableError(f"watch {path}: timed out") from None
    except OSError as error:
        protocol.close()
        raise ApiUnreachableError(f"watch {path}: {cannot_connect(host, port, error)}") from error
    except BaseException:
        protocol.close()
        raise
    return stream


class _WatchProtocol(asyncio.Protocol):
    """The connection's callbacks: unframe the body, cut it into lines, hand out events."""

    def __init__(
        self,
        path: str,
        max_line_bytes: int,
        skippable: LineFilter | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._path = path
        self._max_line_bytes = max_line_bytes
        self._skippable = skippable
        self._loop = loop
        self._reader = ResponseReader()
        self._transport: asyncio.Transport | None = None
        self.head: asyncio.Future[ResponseHead] = loop.create_future()
        self.error_body_read: asyncio.Future[None] = loop.create_future()
        self._done: asyncio.Future[None] = loop.create_future()
        for future in (self.head, self.error_body_read, self._done):
            future.add_done_callback(_retrieved)
        self._on_event: EventHandler | None = None
        self._on_skipped: ProgressHandler | None = None
        self._body: list[bytes] = []
        """Body bytes not handed out yet: before `deliver_to`, or left over by a slice."""
        self._body_bytes = 0
        self._partial = b""
        """The start of a line whose end has not arrived yet."""
        self._paused = False

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but has its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._done.done():
            return
        try:
            body = self._reader.feed(data)
        except HttpWireError as error:
            self._fail(WatchStreamError(f"watch {self._path}: {error}"))
            return
        if not self.head.done():
            head = self._reader.head
            if head is None:
                return
            coding = head.headers.get("content-encoding", "identity").lower()
            if head.status == 200 and coding != "identity":
                self._fail(WatchStreamError(f"watch {self._path}: unasked-for {coding!r} body"))
                return
            self.head.set_result(head)
        if body:
            self._body.append(body)
            self._body_bytes += len(body)
        self._pump()

    def eof_received(self) -> bool | None:
        self._ended()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if exc is not None:
            self._fail(ApiUnreachableError(f"watch {self._path}: {describe(exc)}"))
        else:
            self._ended()

    # --- used by WatchStream and open_stream -----------------------------------------------

    def send(self, request: bytes) -> None:
        assert self._transport is not None
        self._transport.write(request)

    async def deliver_to(self, on_event: EventHandler, on_skipped: ProgressHandler) -> None:
        self._on_event, self._on_skipped = on_event, on_skipped
        self._pump()
        await self._done

    def error_body(self) -> bytes:
        return b"".join(self._body)[:MAX_ERROR_BODY]

    def close(self) -> None:
        if not self._done.done():
            self._done.set_exception(ApiUnreachableError(f"watch {self._path}: closed"))
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    # --- the body ------------------------------------------------------------------------

    def _ended(self) -> None:
        """The server closed the connection: the end of a body that runs to it, else a cut."""
        if self._done.done():
            return
        if self._reader.head is None:
            self._fail(ApiUnreachableError(f"watch {self._path}: closed before an answer"))
            return
        try:
            self._reader.eof()
        except HttpWireError:
            self._fail(ApiUnreachableError(f"watch {self._path}: the connection closed mid-stream"))
            return
        self._pump()

    def _pump(self) -> None:
        """Hand out what has arrived, a slice at a time; finish once the body is complete."""
        head = self._reader.head
        if head is None or self._done.done():
            return
        if head.status != 200:
            if self._reader.finished or self._body_bytes > MAX_ERROR_BODY:
                if not self.error_body_read.done():
                    self.error_body_read.set_result(None)
                self.close()
            return
        on_event, on_skipped = self._on_event, self._on_skipped
        if on_event is None or on_skipped is None or self._paused:
            return
        body = self._body
        work = slices.Slices()
        while body:
            chunk = body.pop(0)
            self._body_bytes -= len(chunk)
            if not self._hand_out(chunk, on_event, on_skipped, work):
                return
        if self._reader.finished and not self._done.done():
            if self._partial.strip():
                self._fail(
                    WatchStreamError(
                        f"watch {self._path}: the stream ended in the middle of a line"
                    )
                )
            else:
                self._done.set_result(None)
                self.close()

    def _hand_out(
        self,
        chunk: bytes,
        on_event: EventHandler,
        on_skipped: ProgressHandler,
        work: slices.Slices,
    ) -> bool:
        """Each complete line of `chunk` as an event (or progress, if skippable); False if it
        stopped (error, or the slice ran its time: the rest waits, reading paused, for the
        loop's next turn)."""
        data = self._partial + chunk if self._partial else chunk
        skippable = self._skippable
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if end - start > self._max_line_bytes:
                self._fail(self._too_long())
                return False
            line = data[start:end]
            start = end + 1
            if not line or line.isspace():
                continue
            rv = skippable(line) if skippable is not None else None
            try:
                if rv is None:
                    on_event(_decode_event(line))
                else:
                    on_skipped(rv)
            except Exception as error:
                self._fail(error)
                return False
            if self._done.done():
                return False
            if work.due() and start < len(data):
                self._partial = b""
                self._body.insert(0, data[start:])
                self._body_bytes += len(data) - start
                self._pause()
                return False
        self._partial = data[start:]
        if len(self._partial) > self._max_line_bytes:
            self._fail(self._too_long())
            return False
        return True

    def _pause(self) -> None:
        self._paused = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()
        self._loop.call_soon(self._resume)

    def _resume(self) -> None:
        self._paused = False
        self._pump()
        if not self._paused and self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def _fail(self, error: BaseException) -> None:
        if not self.head.done():
            self.head.set_exception(error)
        if not self.error_body_read.done():
            self.error_body_read.set_exception(error)
        if not self._done.done():
            self._done.set_exception(error)
        self.close()

    def _too_long(self) -> WatchStreamError:
        return WatchStreamError(f"watch {self._path}: a line exceeds {self._max_line_bytes} bytes")


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen: whoever awaits it gets it; nobody else needs to."""
    if not future.cancelled():
        future.exception()


def _as_bookmark(on_event: EventHandler) -> ProgressHandler:
    """Progress handed to `on_event` as what it means there: a BOOKMARK at that version."""

    def on_skipped(resource_version: str) -> None:
        on_event(
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": resource_version}}}
        )

    return on_skipped


def _decode_event(line: bytes) -> RawEvent:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        raise WatchStreamError(f"not a watch event: {line[:80]!r}") from error
    if (
        not isinstance(event, dict)
        or not isinstance(event.get("type"), str)
        or not isinstance(event.get("object"), dict)
    ):
        raise WatchStreamError(f"not a watch event: {line[:80]!r}")
    return event


__all__ = [
    "EventHandler",
    "KubeApiError",
    "LineFilter",
    "ProgressHandler",
    "RawEvent",
    "WatchStream",
    "open_stream",
]
