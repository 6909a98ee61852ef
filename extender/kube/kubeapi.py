"""A small client for the slice of the Kubernetes API the extender uses.

Paginated LIST, `pods/binding` and node metadata PATCH on aiohttp, streaming WATCH on a
connection of its own read in its callback (extender/kube/watch.py); bodies are raw orjson
dicts, never `kubernetes` model objects (deserialising those is slow, protocol.md §6.4). Auth
comes from kubeauth.py: each request asks the Credentials for the current header and TLS context
(which follow their files on disk), and a 401 or a TLS failure makes them reload once and retry,
so rotated tokens, client certificates and CA bundles are picked up without a restart.

Every failure is one of the KubeApiError subclasses (extender/kube/apierrors.py), so callers can
tell "the server said no" (ApiStatusError, with the HTTP status) from "we could not talk to it"
and "the stream was garbage".
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import aiohttp
import orjson

from extender import __version__
from extender.core.sinks import consumed
from extender.kube.apierrors import (
    ApiStatusError,
    ApiUnreachableError,
    KubeApiError,
    WatchStreamError,
    cannot_connect,
    describe,
    status_error,
)
from extender.kube.kubeauth import Connection, KubeAuthError, RequestAuth
from extender.kube.listpage import Refused, cut_list, kept_items
from extender.kube.slices import Slices
from extender.kube.watch import LineFilter, RawEvent, WatchStream, open_stream

__all__ = [
    "ApiStatusError",
    "ApiUnreachableError",
    "ItemFilter",
    "KubeApi",
    "KubeApiError",
    "LineFilter",
    "RawEvent",
    "RawObject",
    "WatchStream",
    "WatchStreamError",
    "as_listed",
]

RawObject = dict[str, Any]

ItemFilter = Callable[[bytes], bool]
"""Given a raw LIST item: whether to decode it (False: the caller has no use for it)."""

Converted = TypeVar("Converted")
"""What `KubeApi.list_converted` keeps of each listed item."""


USER_AGENT = f"hostport-extender/{__version__}"
"""How every request introduces itself (aiohttp's own default names only Python and aiohttp)."""
MAX_LINE_BYTES = 64 * 1024 * 1024
"""Longest watch line accepted: far above etcd's 1.5 MiB object limit, still a bound."""


class KubeApi:
    """One connection pool to one API server; `open()` it inside the event loop, then use it."""

    def __init__(
        self,
        connection: Connection,
        *,
        request_timeout: float = 30.0,
        max_line_bytes: int = MAX_LINE_BYTES,
        compression: bool = True,
        component: str = "",
    ) -> None:
        """`compression`: ask for gzip (client-go's default, and what a one-shot tool on a
        laptop wants) or for the bytes as they are (`identity`: no CPU spent compressing and
        inflating large lists; the extender's live mode, see Settings.api_compression).
        `component` names the command in the User-Agent (`hostport-extender/0.1.0 (serve)`),
        which the API server's audit log and request metrics record, as client-go's
        `kube-scheduler/v1.36.0 (linux/amd64)` is."""
        self.connection = connection
        self.user_agent = f"{USER_AGENT} ({component})" if component else USER_AGENT
        self._request_timeout = request_timeout
        self._max_line_bytes = max_line_bytes
        self._accept_encoding = "gzip" if compression else "identity"
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Create the HTTP session (each request takes its TLS context from the credentials)."""
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def list_all(
        self,
        path: str,
        *,
        field_selector: str = "",
        limit: int = 500,
        keep: ItemFilter | None = None,
    ) -> tuple[list[RawObject], str]:
        """Every item of a paginated LIST and the list's resourceVersion (a consistent snapshot).

        With `keep`, an item it refuses (read from its raw bytes) is dropped undecoded; a page
        that cannot be cut into items (listpage.cut_list) is decoded whole and kept whole.

        A 410 on a continue token surfaces as ApiStatusError(410): the caller restarts the list,
        as the inconsistent continuation the server offers could miss deletions.
        """
        return await self.list_converted(
            path, as_listed, field_selector=field_selector, limit=limit, keep=keep
        )

    async def list_converted(
        self,
        path: str,
        convert: Callable[[RawObject], Converted | None],
        *,
        field_selector: str = "",
        limit: int = 500,
        keep: ItemFilter | None = None,
    ) -> tuple[list[Converted], str]:
        """`list_all`, each item handed to `convert` as soon as it is decoded and kept only as
        what `convert` returns (None: dropped).

        An informer keeps a few hundred bytes of each listed pod, not the ~20 KB of Python
        objects its decoded JSON is: holding every decoded item until the list was complete
        left the extender at ~500 MB resident after listing 21,000 pods that may hold ports,
        most of it allocator arenas that the freed objects had fragmented. Here one raw item
        is alive at a time (a page that cannot be cut: one page). `convert` must have no effect
        beyond its result: a page whose cut proves wrong is converted again, decoded whole.
        """
        items: list[Converted] = []
        token = ""
        while True:
            params = {"limit": str(limit)}
            if field_selector:
                params["fieldSelector"] = field_selector
            if token:
                params["continue"] = token
            page, metadata = await self._list_page(path, params, keep, convert)
            items.extend(page)
            token = metadata.get("continue") or ""
            if not token:
                rv = metadata.get("resourceVersion")
                if not rv:
                    raise WatchStreamError(f"GET {path}: the list carries no resourceVersion")
                return items, str(rv)

    async def _list_page(
        self,
        path: str,
        params: Mapping[str, str],
        keep: ItemFilter | None,
        convert: Callable[[RawObject], Converted | None],
    ) -> tuple[list[Converted], RawObject]:
        """One page's converted items and metadata, decoded an item at a time between other
        tasks.

        A 500-pod page decoded in one call held the event loop for ~21 ms (bench.busy's relist
        probe); cut into items (extender/kube/listpage.py) it yields every SLICE_SECONDS. An
        answer that cannot be cut exactly is decoded whole.
        """
        data = await self._read("GET", path, params=params)
        slices = Slices()  # the cut's own work counts toward the first slice
        cut = cut_list(data)
        if cut is not None:
            items = await _convert_in_slices(kept_items(cut, keep), convert, slices)
            if items is not None:
                return items, _list_metadata(path, cut.envelope.get("metadata"))
        raw_list = _decode_object("GET", path, data)  # not cut, or cut wrong: whole
        page, metadata = raw_list.get("items"), raw_list.get("metadata")
        if not isinstance(page, list | None):
            raise WatchStreamError(f"GET {path}: the answer is not a Kubernetes list")
        metadata = _list_metadata(path, metadata)
        del raw_list
        items = await _convert_in_slices(consumed(page or []), convert, Slices())
        if items is None:
            raise WatchStreamError(f"GET {path}: a list item is not a JSON object")
        return items, metadata

    async def open_watch(
        self,
        path: str,
        params: Mapping[str, str],
        *,
        timeout_seconds: int,
        skippable: LineFilter | None = None,
    ) -> WatchStream:
        """Start a WATCH on a connection of its own (extender/kube/watch.py); returns once the
        server accepted it (HTTP 200), errors raise here, a 401 or a TLS failure reloads the
        credentials and tries once more (as `_send` does).

        `timeout_seconds` is sent to the server; the informer's own deadline sits above it, so
        a connection that silently dies is noticed as well. `skippable` sees each raw line
        first (see WatchStream).
        """
        query = {**params, "watch": "1", "timeoutSeconds": str(timeout_seconds)}
        for attempt in (1, 2):
            auth, headers = await self._request_auth(attempt, "identity")
            try:
                stream = await open_stream(
                    self.connection.server,
                    path,
                    query,
                    headers,
                    ssl_context=auth.ssl,
                    server_hostname=auth.server_name,
                    connect_seconds=self._request_timeout,
                    max_line_bytes=self._max_line_bytes,
                    skippable=skippable,
                )
            except ssl.SSLError as error:
                if attempt == 1:
                    continue  # a rotated CA bundle or client certificate: reload, try once more
                raise ApiUnreachableError(f"watch {path}: {error}") from error
            if stream.status == 401 and attempt == 1:
                stream.close()
                continue
            if stream.status != 200:
                raise stream.error()
            return stream
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def get(self, path: str) -> RawObject:
        """GET one object (a 404 surfaces as ApiStatusError with status 404)."""
        return await self._json("GET", path)

    async def probe(self, *, within: float) -> str:
        """One cheap request that must be answered: a `limit=1` LIST of nodes; returns its RV.

        It takes the watches' path through authentication, authorisation and storage, so an answer
        shows the server serves us right now; an open watch that stays quiet shows nothing.
        """
        path = "/api/v1/nodes"
        raw_list = await self._json("GET", path, params={"limit": "1"}, total_seconds=within)
        metadata = raw_list.get("metadata")
        rv = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        if not rv:
            raise WatchStreamError(f"GET {path}: the list carries no resourceVersion")
        return str(rv)

    async def create_binding(self, namespace: str, name: str, uid: str, node: str) -> None:
        """POST a v1.Binding with the pod's UID as precondition (a recreated pod is not bound)."""
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}/binding"
        await self._json("POST", path, body=body)

    async def patch_node_metadata(self, name: str, raw_patch: RawObject) -> RawObject:
        """Merge-patch a node (`{"metadata": {"annotations": {...}}}`; None values delete)."""
        path = f"/api/v1/nodes/{quote(name, safe='')}"
        return await self._json(
            "PATCH", path, body=raw_patch, content_type="application/merge-patch+json"
        )

    async def _json(self, method: str, path: str, **options: Any) -> RawObject:
        """`_read`'s answer as a JSON object (the options are `_read`'s)."""
        return _decode_object(method, path, await self._read(method, path, **options))

    async def _read(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: RawObject | None = None,
        content_type: str = "application/json",
        total_seconds: float | None = None,
    ) -> bytes:
        """The whole body of a successful answer (errors raise, see _send)."""
        client_timeout = aiohttp.ClientTimeout(total=total_seconds or self._request_timeout)
        response = await self._send(
            method,
            path,
            params=params,
            body=body,
            content_type=content_type,
            client_timeout=client_timeout,
        )
        try:
            return await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise ApiUnreachableError(f"{method} {path}: {_describe(error)}") from error
        finally:
            response.close()

    async def _request_auth(
        self, attempt: int, accept_encoding: str
    ) -> tuple[RequestAuth, dict[str, str]]:
        """The credentials for a request's first attempt (as they are) or its second (reloaded
        after a 401 or a TLS failure), and the headers every request carries."""
        credentials = self.connection.credentials
        fetch = credentials.current if attempt == 1 else credentials.refresh
        try:
            auth = await asyncio.to_thread(fetch)
        except KubeAuthError as error:
            raise ApiUnreachableError(str(error)) from error
        headers = {
            "Accept": "application/json",
            "Accept-Encoding": accept_encoding,
            "User-Agent": self.user_agent,
        }
        if auth.authorization:
            headers["Authorization"] = auth.authorization
        return auth, headers

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: RawObject | None = None,
        content_type: str = "application/json",
        client_timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        """Send with the current credentials; after a 401 or a TLS failure reload them and resend.

        A new TLS context means new connections (aiohttp pools by context); open watches keep
        theirs until they end.
        """
        if self._session is None:
            raise RuntimeError("KubeApi.open() was not called")
        url = self.connection.server + path
        data = orjson.dumps(body) if body is not None else None
        for attempt in (1, 2):
            auth, headers = await self._request_auth(attempt, self._accept_encoding)
            if data is not None:
                headers["Content-Type"] = content_type
            extra: dict[str, Any] = {"ssl": auth.ssl if auth.ssl is not None else True}
            if auth.server_name:
                extra["server_hostname"] = auth.server_name
            try:
                response = await self._session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    headers=headers,
                    timeout=client_timeout,
                    **extra,
                )
            except aiohttp.ClientSSLError as error:
                if attempt == 1:
                    continue  # a rotated CA bundle or client certificate: reload, try once more
                raise ApiUnreachableError(f"{method} {path}: {_describe(error)}") from error
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                raise ApiUnreachableError(f"{method} {path}: {_describe(error)}") from error
            if response.status == 401 and attempt == 1:
                response.close()
                continue
            if response.status >= 400:
                raise await _status_error(response)
            return response
        raise AssertionError("unreachable: the second attempt returns or raises")


async def _status_error(response: aiohttp.ClientResponse) -> ApiStatusError:
    """The error an aiohttp answer with an error status stands for (see status_error)."""
    try:
        data = await response.read()
    except (aiohttp.ClientError, OSError, TimeoutError):
        data = b""
    finally:
        response.close()
    return status_error(
        response.status, response.reason or "", data, response.headers.get("Retry-After", "")
    )


async def _convert_in_slices(
    items: Iterable[object], convert: Callable[[RawObject], Converted | None], slices: Slices
) -> list[Converted] | None:
    """Each item converted (None: left out; REFUSED: not decoded, left out), a yield to other
    tasks every SLICE_SECONDS, each raw item dropped once converted; None if an item is not a
    JSON object."""
    converted: list[Converted] = []
    for item in items:
        if isinstance(item, Refused):
            await slices.yield_if_due()
            continue
        if not isinstance(item, dict):
            return None
        kept = convert(item)
        del item  # freed here, before the next item is decoded
        if kept is not None:
            converted.append(kept)
        await slices.yield_if_due()
    return converted


def as_listed(raw: RawObject) -> RawObject:
    """The `convert` that keeps each listed item as it was decoded (`list_all`)."""
    return raw


def _list_metadata(path: str, metadata: object) -> RawObject:
    if not isinstance(metadata, dict):
        raise WatchStreamError(f"GET {path}: the answer is not a Kubernetes list")
    return metadata


def _decode_object(method: str, path: str, data: bytes) -> RawObject:
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise WatchStreamError(f"{method} {path}: the answer is not JSON") from error
    if not isinstance(decoded, dict):
        raise WatchStreamError(f"{method} {path}: the answer is not a JSON object")
    return decoded


def _describe(error: BaseException) -> str:
    """A short, stable reason (aiohttp's own text embeds object reprs for connect errors)."""
    if isinstance(error, aiohttp.ClientConnectorError):
        return cannot_connect(error.host, error.port, error.os_error)
    return describe(error)
