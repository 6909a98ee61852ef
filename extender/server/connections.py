"""How the extender's HTTP server treats connections, before a request reaches `app`.

aiohttp bounds an idle keep-alive connection (`keepalive_timeout`), line and header sizes, and
the body size (`client_max_size`), but not the time a client takes to send its headers: a
slowloris client sending a byte at a time holds a connection for as long as it likes. The
`GuardedRequestHandler` adds that deadline; `ConnectionGuard` caps idle connections per client
and connections overall. Only connections waiting for a request are ever closed by the caps, and
the header deadline only runs while a request's headers are incomplete, so the scheduler's
keep-alive connection is never cut mid-request. The body deadline is `app._read_body`'s.
Bodies are never decompressed (`app._refuse_encoded` refuses a declared encoding).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from extender.server.wire import encode_error
from extender.settings import Settings

log = logging.getLogger(__name__)

LINGERING_SECONDS = 2.0
"""After answering a request whose body was not read (415, 408, 413), how long to keep reading
and discarding it so the client sees the answer; aiohttp's default is 10 s."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The connection settings, as the guard applies them."""

    header_timeout_seconds: float
    max_idle_per_client: int
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            settings.header_timeout_seconds,
            settings.max_idle_connections_per_client,
            settings.max_connections,
        )


def server_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `web.AppRunner` (or aiohttp's test server) serving the extender."""
    return {
        "access_log": None,
        "auto_decompress": False,
        "keepalive_timeout": settings.keepalive_timeout_seconds,
        "lingering_time": LINGERING_SECONDS,
    }


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose server is a `ConnectionGuard`."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        super().__init__(app, **server_options(settings))
        self._limits = ConnectionLimits.from_settings(settings)

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # starts the app; its handler and factory are ours
        return ConnectionGuard(plain, self._limits)


class ConnectionGuard(web.Server):
    """aiohttp's server with guarded connections and the two connection caps."""

    def __init__(self, plain: web.Server, limits: ConnectionLimits) -> None:
        super().__init__(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )
        self.limits = limits

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)

    def admit(self, new: GuardedRequestHandler) -> bool:
        """Make room for `new` by closing idle connections; False if `new` must be closed."""
        guarded = [c for c in self.connections if isinstance(c, GuardedRequestHandler)]
        idle = sorted((c for c in guarded if c is not new and c.idle), key=_idle_since)
        client = new.client
        same_client = [c for c in idle if c.client == client]
        for stale in same_client[: max(0, len(same_client) - self.limits.max_idle_per_client)]:
            stale.close_idle(f"more than {self.limits.max_idle_per_client} idle connections")
            idle.remove(stale)
        excess = len(guarded) - sum(c.closing for c in guarded) - self.limits.max_connections
        if excess <= 0:
            return True
        for stale in idle[:excess]:
            stale.close_idle(f"{self.limits.max_connections} connections open")
            excess -= 1
        return excess <= 0

    def idle_by_client(self) -> Counter[str]:
        """Idle connections per client address (for tests and the debug log)."""
        return Counter(
            c.client for c in self.connections if isinstance(c, GuardedRequestHandler) and c.idle
        )


def _idle_since(connection: GuardedRequestHandler) -> float:
    return connection.last_active


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's connection protocol with a deadline for a request's headers.

    The deadline is armed when the connection opens and when the first byte of a request
    arrives on an idle keep-alive connection; it is disarmed as soon as aiohttp has parsed a
    complete request head. It reads three of aiohttp's own fields (`_waiter`: waiting for the
    next request; `_request_count`: request heads parsed; `_loop`), covered by the tests in
    tests/server/test_connections.py so an aiohttp upgrade that changes them fails there.
    """

    def __init__(self, manager: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._header_deadline: asyncio.TimerHandle | None = None
        self._heads_when_armed = 0
        self.last_active = self._loop.time()
        self.client = ""
        self.closing = False

    @property
    def idle(self) -> bool:
        """Waiting for a request, of which not one byte has arrived."""
        return not self.closing and self._waiter is not None and self._header_deadline is None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
        super().connection_made(transport)
        self._arm()
        if not self._guard.admit(self):
            limit = self._guard.limits.max_connections
            log.debug("refusing a connection from %s: %d connections open", self.client, limit)
            self.closing = True
            self.force_close()

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        self.last_active = self._loop.time()
        if self._request_count != heads:
            self._disarm()
        elif self._waiter is not None and self._header_deadline is None:
            self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self.closing = True
        super().connection_lost(exc)

    def close_idle(self, why: str) -> None:
        """Close this idle connection (never one with a request under way)."""
        log.debug("closing an idle connection from %s: %s", self.client, why)
        self.closing = True
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp could not parse (bad head, bad chunk size, too long a line) gets a
        one-line JSON Error, as every other error does, and one log line, no traceback."""
        if request.writer.output_size > 0:  # as aiohttp: the answer has begun, cut the line
            raise ConnectionError("response already started, cannot send the error")
        text = " ".join((message or str(exc or "") or f"HTTP {status}").split())[:200]
        if status >= 500:
            log.error("error handling a request from %s: %s", request.remote, text)
        else:
            log.debug("malformed request from %s: %s", request.remote, text)
        response = web.Response(
            body=encode_error(text), status=status, content_type="application/json"
        )
        response.force_close()
        return response

    def _arm(self) -> None:
        self._disarm()
        self._heads_when_armed = self._request_count
        timeout = self._guard.limits.header_timeout_seconds
        self._header_deadline = self._loop.call_later(timeout, self._headers_overdue)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_overdue(self) -> None:
        self._header_deadline = None
        if self._request_count == self._heads_when_armed and self._waiter is not None:
            log.debug(
                "closing a connection from %s: no complete request head within %g s",
                self.client,
                self._guard.limits.header_timeout_seconds,
            )
            self.closing = True
            self.force_close()
