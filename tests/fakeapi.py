"""An in-process fake of the slice of the Kubernetes API the extender uses, for tests.

It speaks the real wire protocol over a real socket (plain HTTP or TLS with its own CA) so the
informer, the API client and the official config loader are exercised unchanged. Where the real
server would be lenient or vague, the fake is strict (see ../shared/protocol.md §4-5):

- one global, monotonic resourceVersion; a bounded history, so old versions answer 410 Gone;
- LIST with `limit`/`continue` serves a consistent snapshot; tokens can be expired (410 Expired);
  a list larger than 128 KiB is gzipped (level 1) for a client that accepts gzip;
- WATCH streams newline-delimited JSON in chunks, ADDED/MODIFIED/DELETED/BOOKMARK/ERROR, honours
  `timeoutSeconds` and `allowWatchBookmarks`, turns selector transitions into ADDED/DELETED;
  events queued together are written together, as the real server flushes once its channel
  is empty;
- `pods/binding` with the UID precondition; merge-patch of node metadata; bearer tokens and
  client certificates (a CA of its own, from extender.webhook.certs), both checked.

Tests drive it through plain methods: `put`/`remove` objects, `rotate_token`, `break_streams`,
`expire_watches`, `compact`, `expire_continue_tokens`, `inject_error`, `inject_garbage`,
`go_down`/`come_up`, `stall`/`resume` (a SIGSTOPped server: connections stay open, nothing
flows), `trust_client_ca` (the client CA is rotated: certificates from the old one get 401),
`rotate_serving_ca` (a new server certificate from a new CA, the CA file rewritten).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import itertools
import ssl
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from extender.webhook import certs

RawObject = dict[str, Any]
_PEM = serialization.Encoding.PEM

KINDS = {"pods": "Pod", "nodes": "Node"}
LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
_FIELD_LABELS: dict[str, frozenset[str]] = {
    "pods": frozenset(
        {
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.hostNetwork",
            "spec.schedulerName",
            "spec.restartPolicy",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        }
    ),
    "nodes": frozenset({"metadata.name", "spec.unschedulable"}),
}


def status_body(code: int, reason: str, message: str) -> RawObject:
    """A metav1.Status as the API server writes it for a failure."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class _StatusError(Exception):
    """Ends a handler with a metav1.Status answer."""

    def __init__(
        self, code: int, reason: str, message: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.retry_after = retry_after

    def response(self) -> web.Response:
        response = web.Response(
            status=self.code,
            body=orjson.dumps(status_body(self.code, self.reason, self.message)),
            content_type="application/json",
        )
        if self.retry_after is not None:
            response.headers["Retry-After"] = str(self.retry_after)
        return response


def _field_value(kind: str, raw: RawObject, label: str) -> str:
    """The value the API server's selectable-fields function gives `label` (protocol.md §4)."""
    section, _, name = label.partition(".")
    value = raw.get(section, {}).get(name)
    if label in ("spec.hostNetwork", "spec.unschedulable"):
        return "true" if value else "false"
    return "" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    """One `label=value` or `label!=value` term of a field selector."""

    label: str
    equal: bool
    value: str


def parse_field_selector(kind: str, text: str) -> tuple[FieldRequirement, ...]:
    """Parse a field selector like the API server; unsupported labels are a 400, as there."""
    requirements = []
    for term in text.split(","):
        if not term.strip():
            continue
        for operator, is_equal in (("!=", False), ("==", True), ("=", True)):
            if operator in term:
                label, _, value = term.partition(operator)
                equal = is_equal
                break
        else:
            raise _StatusError(400, "BadRequest", f"invalid field selector: {term!r}")
        label = label.strip()
        if label not in _FIELD_LABELS[kind]:
            raise _StatusError(400, "BadRequest", f"field label not supported: {label}")
        requirements.append(FieldRequirement(label, equal, value.strip()))
    return tuple(requirements)


def _matches(kind: str, raw: RawObject, selector: tuple[FieldRequirement, ...]) -> bool:
    return all((_field_value(kind, raw, r.label) == r.value) == r.equal for r in selector)


def _key(raw: RawObject) -> str:
    meta = raw["metadata"]
    namespace = meta.get("namespace", "")
    return f"{namespace}/{meta['name']}" if namespace else meta["name"]


_QueueItem = bytes | str | asyncio.Event
"""What a watcher's queue holds: lines to write, "close"/"abort"/TIMED_OUT, or a stall's gate."""

TIMED_OUT = "timed out"
"""Queued when the watch's timeoutSeconds is up: the server ends it (with a BOOKMARK first)."""

WRITE_BATCH_BYTES = 64 * 1024
"""The most one watch write gathers from what is already queued (the real server's buffered
writer sends 4 KiB at a time while it drains its channel; any bound works for a client)."""


def _write_batches(lines: list[bytes]) -> Iterator[bytes]:
    """`lines` joined into writes of about WRITE_BATCH_BYTES (a watch's replayed backlog)."""
    batch: list[bytes] = []
    size = 0
    for line in lines:
        batch.append(line)
        size += len(line)
        if size >= WRITE_BATCH_BYTES:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch)


@dataclass(frozen=True, slots=True)
class _Change:
    """One entry of the event history: the state after and before a write."""

    rv: int
    kind: str
    type: str
    obj: RawObject
    prev: RawObject | None


@dataclass(slots=True, eq=False)
class _Watcher:
    kind: str
    namespace: str | None
    selector: tuple[FieldRequirement, ...]
    bookmarks: bool
    queue: asyncio.Queue[_QueueItem] = field(default_factory=asyncio.Queue)
    """Lines to write; "close"/"abort" end the stream; an Event holds it until set (a stall)."""
    covered_rv: int = 0
    """Changes up to this RV were sent as the backlog (or predate the watch)."""
    user_agent: str = ""
    """The client's User-Agent header (`pause_watches` can hold back one client's watches)."""


@dataclass(slots=True)
class _Snapshot:
    """The rest of a paginated list, frozen at the list's resourceVersion."""

    rv: int
    signature: tuple[str, str | None, str]
    items: list[RawObject]
    expired: bool = False


@dataclass(slots=True)
class _Injection:
    status: int
    times: int
    method: str | None
    path: str | None
    watch: bool | None
    retry_after: int | None


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """What a test can check about a request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    authorization: str | None
    accept_encoding: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True, slots=True)
class Pki:
    """A throwaway CA with a server certificate for 127.0.0.1/localhost (extender.webhook.certs)."""

    directory: Path
    authority: certs.Authority
    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def create(cls, directory: Path) -> Pki:
        """Generate the CA and the server certificate; only the CA key stays in memory."""
        directory.mkdir(parents=True, exist_ok=True)
        authority = certs.new_authority("fake-kubernetes-ca", days=2)
        ca_cert = directory / "ca.crt"
        ca_cert.write_bytes(authority.cert_pem)
        server = certs.issue(
            authority, "kube-apiserver", dns_names=["localhost"], ip_addresses=["127.0.0.1"], days=2
        )
        server_cert, server_key = _write_pair(directory, "server", server)
        return cls(directory, authority, ca_cert, server_cert, server_key)

    def issue_client(
        self, user: str, *, authority: certs.Authority | None = None, name: str = ""
    ) -> tuple[Path, Path]:
        """A client certificate (CN = user) signed by the CA (or `authority`), written to
        `client-{name or user}.crt/.key` (overwritten in place if they exist); (cert, key)."""
        issued = certs.issue(authority or self.authority, user, client=True, days=2)
        return _write_pair(self.directory, f"client-{name or user}", issued)


def _write_pair(directory: Path, name: str, issued: certs.Issued) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    key.chmod(0o600)
    return cert, key


class FakeApiServer:
    """The fake API server: state, history, watchers and the aiohttp app serving them."""

    def __init__(
        self,
        *,
        token: str = "token-1",
        history_limit: int = 1000,
        pki: Pki | None = None,
        expired_watch_as: str = "event",
    ) -> None:
        """`expired_watch_as` is how a too-old watch RV is refused: "event" or "status"."""
        self.tokens = {token}
        self.history_limit = history_limit
        self.pki = pki
        self.expired_watch_as = expired_watch_as
        self.rv = 1
        self.objects: dict[str, dict[str, RawObject]] = {kind: {} for kind in KINDS}
        self.history: deque[_Change] = deque()
        self.compacted_rv = 1
        self.requests: list[RecordedRequest] = []
        self.gzipped_answers = 0
        """How many answers went out gzipped (a large list to a client that accepts gzip)."""
        self._watchers: set[_Watcher] = set()
        self._snapshots: dict[str, _Snapshot] = {}
        self._injections: list[_Injection] = []
        self._hang_ups = 0
        self._token_ids = itertools.count(1)
        self._paused_agent: str | None = None
        """While set, changes are held back from the watches whose User-Agent starts with it
        ("" for every watch), in `_pending`, until `resume_watches`."""
        self._pending: list[_Change] = []
        self.after_list_page: Callable[[str], None] | None = None
        """Called after each list page is built: lets a test act between two pages."""
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._server_context: ssl.SSLContext | None = None
        self.client_cas: list[x509.Certificate] = [pki.authority.cert] if pki else []
        """Client certificates must be issued by one of these (checked per request, as there)."""
        self._stall: asyncio.Event | None = None
        self._frozen_watches: asyncio.Event | None = None
        self.port = 0
        self.app = web.Application(middlewares=[self._middleware])
        for prefix in ("/api/v1/", "/api/v1/namespaces/{namespace}/"):
            self.app.router.add_get(prefix + "{resource:pods|nodes}", self._collection)
        self.app.router.add_get("/api/v1/nodes/{name}", self._get_node)
        self.app.router.add_patch("/api/v1/nodes/{name}", self._patch_node)
        self.app.router.add_post("/api/v1/namespaces/{namespace}/pods/{name}/binding", self._bind)
        self.leases: dict[str, RawObject] = {}
        self.app.router.add_get(LEASE_PATH, self._get_lease)
        self.app.on_shutdown.append(self._on_shutdown)
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "https" if self.pki else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.pki is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        context.load_verify_locations(self.pki.ca_cert)
        for authority in self.client_cas:
            context.load_verify_locations(cadata=authority.public_bytes(_PEM).decode())
        context.verify_mode = ssl.CERT_OPTIONAL
        self._server_context = context
        return context

    async def start(self) -> None:
        """Listen on 127.0.0.1 (an ephemeral port the first time, the same one afterwards)."""
        self._stopping = False
        # The backstop only: on_shutdown cuts every watch, so handlers end at once.
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner, "127.0.0.1", self.port, ssl_context=self._ssl_context()
        )
        await self._site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening and cut every stream (on_shutdown runs once no new connection comes)."""
        self.resume()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = self._site = None

    async def _on_shutdown(self, app: web.Application) -> None:
        self._stopping = True
        self.break_streams()

    async def go_down(self) -> None:
        """The API server becomes unreachable: streams are cut, connections refused."""
        await self.stop()

    async def come_up(self) -> None:
        """The API server is back on the same port."""
        await self.start()

    def write_kubeconfig(
        self,
        path: Path,
        *,
        token: str | None = None,
        client_cert: tuple[Path, Path] | None = None,
        exec_command: list[str] | None = None,
        context: str = "fake",
    ) -> Path:
        """A kubeconfig for this server with one user: token, client certificate or exec plugin."""
        user: RawObject = {}
        if token is not None:
            user["token"] = token
        if client_cert is not None:
            user["client-certificate"], user["client-key"] = map(str, client_cert)
        if exec_command is not None:
            user["exec"] = {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": exec_command[0],
                "args": exec_command[1:],
                "interactiveMode": "Never",
            }
        cluster: RawObject = {"server": self.url}
        if self.pki is not None:
            cluster["certificate-authority"] = str(self.pki.ca_cert)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "tester", "user": user}],
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "tester"}}],
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # -- the test API: state -----------------------------------------------------------------

    def put(self, kind: str, raw: RawObject) -> RawObject:
        """Create or replace an object (like a controller's write); returns the stored copy."""
        obj = _clone(raw)
        meta = obj.setdefault("metadata", {})
        if kind == "pods" and not meta.get("namespace"):
            raise ValueError("pods need metadata.namespace")
        key = _key(obj)
        prev = self.objects[kind].get(key)
        self.rv += 1
        if prev is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        else:
            meta["uid"] = prev["metadata"]["uid"]
            meta["creationTimestamp"] = prev["metadata"]["creationTimestamp"]
        meta["resourceVersion"] = str(self.rv)
        obj.setdefault("kind", KINDS[kind])
        obj.setdefault("apiVersion", "v1")
        if kind == "pods":
            obj.setdefault("spec", {})
            obj.setdefault("status", {}).setdefault("phase", "Pending")
        self.objects[kind][key] = obj
        self._record(_Change(self.rv, kind, "MODIFIED" if prev else "ADDED", obj, prev))
        return _clone(obj)

    def remove(self, kind: str, key: str) -> None:
        """Delete an object by `namespace/name` (pods) or `name` (nodes)."""
        prev = self.objects[kind].pop(key)
        self.rv += 1
        gone = _clone(prev)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._record(_Change(self.rv, kind, "DELETED", gone, prev))

    def get(self, kind: str, key: str) -> RawObject:
        """A copy of the stored object."""
        return _clone(self.objects[kind][key])

    def truth(self, kind: str, field_selector: str = "") -> dict[str, RawObject]:
        """What a fresh, consistent list would return, keyed like the informer's sinks."""
        selector = parse_field_selector(kind, field_selector)
        return {
            key: _clone(obj)
            for key, obj in self.objects[kind].items()
            if _matches(kind, obj, selector)
        }

    # -- the test API: faults ----------------------------------------------------------------

    def rotate_token(self, new: str) -> None:
        """Only `new` is accepted from now on (old tokens get 401 at once: stricter than real)."""
        self.tokens = {new}

    def compact(self) -> None:
        """Forget the whole history: watches from any earlier RV get 410 Gone."""
        self.history.clear()
        self.compacted_rv = self.rv

    def expire_continue_tokens(self) -> None:
        """Every outstanding continue token now answers 410 Expired."""
        for snapshot in self._snapshots.values():
            snapshot.expired = True

    def break_streams(self, partial_line: bytes = b"") -> None:
        """Cut every open watch abruptly (no terminating chunk), optionally mid-line."""
        for watcher in self._watchers:
            watcher.queue.put_nowait(partial_line)
            watcher.queue.put_nowait("abort")

    def stall(self, *, partial_line: bytes = b"", requests: bool = True) -> None:
        """Fall silent without closing anything, as a SIGSTOPped API server does.

        Open watches write `partial_line` (a line cut in the middle, if given) and then nothing;
        with `requests`, new requests are accepted and never answered. Until `resume()`.
        Without `requests` only the open watches freeze (a wedged proxy or watch cache).
        """
        gate = self._stall or asyncio.Event()
        for watcher in self._watchers:
            if partial_line:
                watcher.queue.put_nowait(partial_line)
            watcher.queue.put_nowait(gate)
        if requests:
            self._stall = gate
        elif self._stall is None:
            self._frozen_watches = gate

    def resume(self) -> None:
        """End a stall: held requests are answered, frozen watches deliver what they held."""
        for gate in (self._stall, self._frozen_watches):
            if gate is not None:
                gate.set()
        self._stall = self._frozen_watches = None

    def trust_client_ca(self, authority: certs.Authority) -> None:
        """From now on only certificates issued by `authority` authenticate (others get 401).

        Like kube-apiserver reloading `--client-ca-file`: the TLS handshake still completes with
        an old certificate, the request is then Unauthorized. Open watches are not touched. (A
        certificate from a CA never trusted fails the handshake instead: Python's ssl cannot ask
        for a certificate without checking it.)
        """
        self.client_cas = [authority.cert]
        if self._server_context is not None:
            self._server_context.load_verify_locations(
                cadata=authority.cert.public_bytes(_PEM).decode()
            )

    async def rotate_serving_ca(self) -> None:
        """A new CA signs a new serving certificate; `ca.crt` is rewritten in place (as a CA
        bundle in a kubeconfig or a service-account mount is) and the server restarts on the
        same port, so every connection is cut and new ones see the new certificate."""
        assert self.pki is not None, "rotate_serving_ca needs a fake with a Pki"
        authority = certs.new_authority("fake-kubernetes-ca-2", days=2)
        server = certs.issue(
            authority, "kube-apiserver", dns_names=["localhost"], ip_addresses=["127.0.0.1"], days=2
        )
        await self.stop()
        self.pki.ca_cert.write_bytes(authority.cert_pem)
        _write_pair(self.pki.directory, "server", server)
        await self.start()

    def hang_up_watches(self, times: int) -> None:
        """The next `times` watches are accepted (200) and then end at once, with no event."""
        self._hang_ups = times

    def expire_watches(self) -> None:
        """Every open watch gets an ERROR event 410 Expired and is closed, as the cacher does."""
        for watcher in self._watchers:
            rv = self.rv
            event = {"type": "ERROR", "object": _expired_status(rv, rv)}
            watcher.queue.put_nowait(orjson.dumps(event) + b"\n")
            watcher.queue.put_nowait("close")

    def send_bookmark(self) -> None:
        """A BOOKMARK at the current RV to every watch that allowed bookmarks."""
        for watcher in self._watchers:
            if watcher.bookmarks:
                watcher.queue.put_nowait(self._bookmark_line(watcher.kind))

    def inject_garbage(self, line: bytes = b"<html>proxy error</html>") -> None:
        """Write a line that is not a watch event into every open watch."""
        for watcher in self._watchers:
            watcher.queue.put_nowait(line + b"\n")

    def inject_error(
        self,
        status: int,
        *,
        times: int = 1,
        method: str | None = None,
        path: str | None = None,
        watch: bool | None = None,
        retry_after: int | None = None,
    ) -> None:
        """The next `times` matching requests answer `status` (429 carries Retry-After)."""
        if status == 429 and retry_after is None:
            retry_after = 1
        self._injections.append(_Injection(status, times, method, path, watch, retry_after))

    @property
    def open_watches(self) -> int:
        return len(self._watchers)

    # -- internals ---------------------------------------------------------------------------

    def pause_watches(self, user_agent: str = "") -> None:
        """Hold back events from open watches (a slow watch cache) until `resume_watches`: all
        of them, or those of clients whose User-Agent starts with `user_agent` (the others keep
        receiving, like the other clients of a real API server)."""
        self._paused_agent = user_agent

    def resume_watches(self) -> None:
        """Deliver the held-back events, in order, to the watches they were held from."""
        held_from = self._paused_agent
        self._paused_agent = None
        if held_from is None:
            return
        for change in self._pending:
            self._deliver(change, lambda watcher: watcher.user_agent.startswith(held_from))
        self._pending.clear()

    def _record(self, change: _Change) -> None:
        self.history.append(change)
        while len(self.history) > self.history_limit:
            self.compacted_rv = self.history.popleft().rv
        held_from = self._paused_agent
        if held_from is None:
            self._deliver(change)
            return
        self._pending.append(change)
        self._deliver(change, lambda watcher: not watcher.user_agent.startswith(held_from))

    def _deliver(self, change: _Change, to: Callable[[_Watcher], bool] | None = None) -> None:
        """Queue `change` for every watch it concerns (of those `to` accepts, if given).

        Each event type's line is encoded once per change, whoever watches: the real server
        serializes an event once for all its watchers (the cacher's cachingObject), so a second
        client watching the same pods costs it the write, not a second encoding.
        """
        encoded: dict[str, bytes] = {}
        for watcher in self._watchers:
            if change.rv <= watcher.covered_rv or (to is not None and not to(watcher)):
                continue
            kind = _event_type(change, watcher)
            if kind is None:
                continue
            line = encoded.get(kind)
            if line is None:
                line = encoded[kind] = _encode_event(kind, _event_object(change, kind))
            watcher.queue.put_nowait(line)

    def _bookmark_line(self, kind: str) -> bytes:
        obj = {
            "kind": KINDS[kind],
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self.rv)},
        }
        return orjson.dumps({"type": "BOOKMARK", "object": obj}) + b"\n"

    def _authenticated(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() == "bearer" and token in self.tokens:
                return True
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            return False
        presented = x509.load_der_x509_certificate(der)
        for authority in self.client_cas:
            try:
                presented.verify_directly_issued_by(authority)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return True
        return False

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        self.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                dict(request.query),
                request.headers.get("Authorization"),
                request.headers.get("Accept-Encoding"),
                request.headers.get("User-Agent"),
            )
        )
        if self._stall is not None:
            await self._stall.wait()  # accepted, read, and left unanswered until resume()
        try:
            if not self._authenticated(request):
                raise _StatusError(401, "Unauthorized", "Unauthorized")
            self._apply_injection(request)
            response: web.StreamResponse = await handler(request)
        except _StatusError as error:
            response = error.response()
        return response

    def _apply_injection(self, request: web.Request) -> None:
        is_watch = request.query.get("watch") in ("1", "true")
        for injection in self._injections:
            if injection.method not in (None, request.method):
                continue
            if injection.path is not None and injection.path != request.path:
                continue
            if injection.watch is not None and injection.watch != is_watch:
                continue
            injection.times -= 1
            if injection.times <= 0:
                self._injections.remove(injection)
            reasons = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
            raise _StatusError(
                injection.status,
                reasons.get(injection.status, "Unknown"),
                "injected by the test",
                retry_after=injection.retry_after,
            )

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        resource = request.match_info["resource"]
        namespace = request.match_info.get("namespace")
        if resource == "nodes" and namespace is not None:
            raise _StatusError(404, "NotFound", "nodes are not namespaced")
        query = request.query
        unknown = set(query) - {
            "watch", "resourceVersion", "resourceVersionMatch", "limit", "continue",
            "fieldSelector", "labelSelector", "allowWatchBookmarks", "timeoutSeconds",
        }  # fmt: skip
        if unknown:
            raise _StatusError(400, "BadRequest", f"fake: unsupported parameters {sorted(unknown)}")
        if query.get("labelSelector"):
            raise _StatusError(400, "BadRequest", "fake: labelSelector is not implemented")
        selector = parse_field_selector(resource, query.get("fieldSelector", ""))
        watch = query.get("watch", "false")
        if watch not in ("1", "true", "0", "false"):
            raise _StatusError(400, "BadRequest", f"invalid watch value {watch!r}")
        if watch in ("1", "true"):
            return await self._watch(request, resource, namespace, selector)
        return self._list(request, resource, namespace, selector)

    def _list(
        self,
        request: web.Request,
        kind: str,
        namespace: str | None,
        selector: tuple[FieldRequirement, ...],
    ) -> web.Response:
        query = request.query
        limit = _int_param(query, "limit", minimum=0)
        rv_text = query.get("resourceVersion", "")
        signature = (kind, namespace, query.get("fieldSelector", ""))
        token = query.get("continue", "")
        if query.get("resourceVersionMatch"):
            raise _StatusError(400, "BadRequest", "fake: resourceVersionMatch is not implemented")
        if token:
            if rv_text:
                raise _StatusError(
                    400, "BadRequest", "specifying resource version is not allowed with continue"
                )
            snapshot = self._snapshots.pop(token, None)
            if snapshot is None or snapshot.signature != signature:
                raise _StatusError(400, "BadRequest", "continue key is not valid")
            if snapshot.expired:
                raise _StatusError(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter.",
                )
        else:
            if rv_text not in ("", "0"):
                requested = _parse_rv(rv_text)
                if requested > self.rv:
                    raise _StatusError(504, "Timeout", f"Too large resource version: {requested}")
                if limit and requested != self.rv:
                    # Exact semantics with limit; the fake keeps no old states: stricter than etcd.
                    raise _StatusError(410, "Expired", f"too old resource version: {requested}")
            # Stored objects are replaced on every write, never changed in place, so the
            # snapshot can share them. Items of a list carry no kind/apiVersion, as for real.
            items = [
                {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
                for key, obj in sorted(self.objects[kind].items())
                if (namespace is None or obj["metadata"].get("namespace") == namespace)
                and _matches(kind, obj, selector)
            ]
            snapshot = _Snapshot(self.rv, signature, items)
        page = snapshot.items[:limit] if limit else snapshot.items
        rest = snapshot.items[len(page) :]
        metadata: RawObject = {"resourceVersion": str(snapshot.rv)}
        if rest:
            next_token = base64.urlsafe_b64encode(
                f"{snapshot.rv}:{next(self._token_ids)}".encode()
            ).decode()
            self._snapshots[next_token] = _Snapshot(snapshot.rv, signature, rest, snapshot.expired)
            metadata["continue"] = next_token
        if self.after_list_page is not None:
            self.after_list_page(kind)
        body = {
            "kind": KINDS[kind] + "List",
            "apiVersion": "v1",
            "metadata": metadata,
            "items": page,
        }
        response = _negotiated(request, orjson.dumps(body))
        self.gzipped_answers += response.headers.get("Content-Encoding") == "gzip"
        return response

    async def _watch(
        self,
        request: web.Request,
        kind: str,
        namespace: str | None,
        selector: tuple[FieldRequirement, ...],
    ) -> web.StreamResponse:
        query = request.query
        for forbidden in ("limit", "continue", "resourceVersionMatch"):
            if query.get(forbidden):
                raise _StatusError(400, "BadRequest", f"{forbidden} is not allowed on a watch")
        bookmarks = query.get("allowWatchBookmarks", "false")
        if bookmarks not in ("true", "false", "1", "0"):
            raise _StatusError(400, "BadRequest", f"invalid allowWatchBookmarks {bookmarks!r}")
        timeout = _int_param(query, "timeoutSeconds", minimum=0) or 1800
        rv_text = query.get("resourceVersion", "")
        watcher = _Watcher(
            kind,
            namespace,
            selector,
            bookmarks in ("true", "1"),
            user_agent=request.headers.get("User-Agent", ""),
        )
        backlog: list[bytes] = []
        expired: RawObject | None = None
        if rv_text in ("", "0"):
            # "Get State and Start at Most Recent": synthetic ADDED for every matching object.
            for obj in self.objects[kind].values():
                change = _Change(self.rv, kind, "ADDED", obj, None)
                line = _event_line(change, watcher)
                if line is not None:
                    backlog.append(line)
        else:
            since = _parse_rv(rv_text)
            if since < self.compacted_rv:
                expired = _expired_status(since, self.compacted_rv + 1)
                if self.expired_watch_as == "status":
                    raise _StatusError(410, "Expired", expired["message"])
            else:
                for change in self.history:
                    if change.rv > since:
                        line = _event_line(change, watcher)
                        if line is not None:
                            backlog.append(line)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        if self._hang_ups > 0:
            # A flapping proxy: the watch is accepted, then ends at once with no event.
            self._hang_ups -= 1
            await response.prepare(request)
            await response.write_eof()
            return response
        if expired is not None:
            await response.prepare(request)
            await response.write(orjson.dumps({"type": "ERROR", "object": expired}) + b"\n")
            await response.write_eof()
            return response
        # Registered before the first await, so no write between the backlog and now is lost.
        watcher.covered_rv = self.rv
        self._watchers.add(watcher)
        if self._stopping:
            self.break_streams()  # accepted just before the listener closed: cut it too
        expiry: asyncio.TimerHandle | None = None
        try:
            await response.prepare(request)
            for batch in _write_batches(backlog):
                await response.write(batch)
            # The server's timeoutSeconds arrives as an item in the queue: one timer per watch,
            # not one per event (wait_for on every get cost the fake more CPU per event than
            # writing it, on the same cores as the extender under test).
            expiry = asyncio.get_running_loop().call_later(
                timeout, watcher.queue.put_nowait, TIMED_OUT
            )
            held: _QueueItem | None = None  # a control item met while gathering lines
            while True:
                if held is not None:
                    item, held = held, None
                else:
                    item = await watcher.queue.get()
                if item == TIMED_OUT:
                    if watcher.bookmarks:
                        await response.write(self._bookmark_line(kind))
                    break
                if isinstance(item, bytes):
                    # What is already queued goes out in one write: the real server flushes
                    # only once its event channel is empty (k8s.io/apiserver endpoints/
                    # handlers/watch.go, HandleHTTP: `if len(ch) == 0 { flusher.Flush() }`),
                    # so events written together reach the client together.
                    lines = [item]
                    size = len(item)
                    while size < WRITE_BATCH_BYTES and not watcher.queue.empty():
                        queued = watcher.queue.get_nowait()
                        if not isinstance(queued, bytes):
                            held = queued
                            break
                        lines.append(queued)
                        size += len(queued)
                    item = b"".join(lines)
                if isinstance(item, asyncio.Event):
                    await item.wait()  # a stall: the connection stays open, nothing is written
                    continue
                if item == "close":
                    break
                if item == "abort":
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                assert isinstance(item, bytes)
                if item:
                    await response.write(item)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away: nothing to tell it
        finally:
            if expiry is not None:
                expiry.cancel()
            self._watchers.discard(watcher)
        return response

    async def _get_node(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        node = self.objects["nodes"].get(name)
        if node is None:
            raise _StatusError(404, "NotFound", f'nodes "{name}" not found')
        return web.Response(body=orjson.dumps(node), content_type="application/json")

    async def _patch_node(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if request.content_type not in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            raise _StatusError(
                415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                f"accepted media types include: application/merge-patch+json, "
                f"application/strategic-merge-patch+json (got {request.content_type})"
            )  # fmt: skip
        try:
            patch = orjson.loads(await request.read())
        except orjson.JSONDecodeError as error:
            raise _StatusError(400, "BadRequest", f"invalid JSON patch: {error}") from error
        if not isinstance(patch, dict) or set(patch) - {"metadata"}:
            raise _StatusError(422, "Invalid", "fake: only metadata may be patched")
        meta_patch = patch.get("metadata") or {}
        if not isinstance(meta_patch, dict) or set(meta_patch) - {
            "annotations",
            "labels",
            "resourceVersion",
        }:
            raise _StatusError(422, "Invalid", "fake: only metadata.annotations/labels may change")
        node = self.objects["nodes"].get(name)
        if node is None:
            raise _StatusError(404, "NotFound", f'nodes "{name}" not found')
        wanted_rv = meta_patch.get("resourceVersion")
        if wanted_rv is not None and wanted_rv != node["metadata"]["resourceVersion"]:
            raise _StatusError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on nodes "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
            )
        updated = _clone(node)
        for section in ("annotations", "labels"):
            changes = meta_patch.get(section)
            if changes is None:
                continue
            if not isinstance(changes, dict) or not all(
                isinstance(v, str | None) for v in changes.values()
            ):
                raise _StatusError(422, "Invalid", f"metadata.{section} values must be strings")
            target = updated["metadata"].setdefault(section, {})
            for key, value in changes.items():
                if value is None:
                    target.pop(key, None)
                else:
                    target[key] = value
        stored = self.put("nodes", updated)
        return web.Response(body=orjson.dumps(stored), content_type="application/json")

    async def _bind(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        try:
            binding = orjson.loads(await request.read())
        except orjson.JSONDecodeError as error:
            raise _StatusError(400, "BadRequest", f"invalid JSON: {error}") from error
        if not isinstance(binding, dict) or binding.get("kind", "Binding") != "Binding":
            raise _StatusError(400, "BadRequest", "the body must be a v1.Binding")
        meta = binding.get("metadata") or {}
        target = binding.get("target") or {}
        if meta.get("name") != name:
            raise _StatusError(400, "BadRequest", "name in the body does not match the URL")
        if meta.get("namespace", namespace) != namespace:
            raise _StatusError(
                400, "BadRequest", "the namespace of the body does not match the URL"
            )
        if target.get("kind", "Node") not in ("Node", "") or not target.get("name"):
            raise _StatusError(
                422, "Invalid", f'Binding.core "{name}" is invalid: target: Required value'
            )
        key = f"{namespace}/{name}"
        pod = self.objects["pods"].get(key)
        if pod is None:
            raise _StatusError(404, "NotFound", f'pods "{name}" not found')
        uid = meta.get("uid")
        if uid and uid != pod["metadata"]["uid"]:
            raise _StatusError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on pods/binding "{name}": Precondition failed: '
                f"UID in precondition: {uid}, UID in object meta: {pod['metadata']['uid']}",
            )
        if pod["spec"].get("nodeName"):
            raise _StatusError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on pods/binding "{name}": pod {name} is already '
                f'assigned to node "{pod["spec"]["nodeName"]}"',
            )
        bound = _clone(pod)
        bound["spec"]["nodeName"] = target["name"]
        self.put("pods", bound)
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }
        return web.Response(status=201, body=orjson.dumps(body), content_type="application/json")

    def watchers(self) -> Iterator[_Watcher]:
        """The open watches (for tests that wait until a client is watching)."""
        return iter(list(self._watchers))

    # -- leases (coordination.k8s.io/v1, GET only: what the webhook reads) -------------------

    def put_lease(
        self, namespace: str, name: str, *, holder: str, renewed: datetime, duration: int = 15
    ) -> RawObject:
        """Write a leader-election Lease as kube-scheduler's leader election does."""
        self.rv += 1
        key = f"{namespace}/{name}"
        previous = self.leases.get(key)
        micro = renewed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        meta = previous["metadata"] if previous else {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "creationTimestamp": renewed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }  # fmt: skip
        lease = {
            "kind": "Lease",
            "apiVersion": "coordination.k8s.io/v1",
            "metadata": {**meta, "resourceVersion": str(self.rv)},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": duration,
                "acquireTime": previous["spec"]["acquireTime"] if previous else micro,
                "renewTime": micro,
                "leaseTransitions": 0,
            },
        }
        self.leases[key] = lease
        return _clone(lease)

    def remove_lease(self, namespace: str, name: str) -> None:
        del self.leases[f"{namespace}/{name}"]

    async def _get_lease(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        lease = self.leases.get(f"{namespace}/{name}")
        if lease is None:
            raise _StatusError(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
        return web.Response(body=orjson.dumps(lease), content_type="application/json")


GZIP_THRESHOLD_BYTES = 128 * 1024
"""kube-apiserver gzips an answer larger than this (its first write, the whole object or list)
for a client whose Accept-Encoding names gzip, at level 1 (APIResponseCompression, on by
default; k8s.io/apiserver pkg/endpoints/handlers/responsewriters/writers.go,
defaultGzipThresholdBytes and defaultGzipContentEncodingLevel). Watch streams are not."""


def _negotiated(request: web.Request, body: bytes) -> web.Response:
    """A JSON answer, gzipped as the API server would for this request."""
    accepted = request.headers.get("Accept-Encoding", "")
    wants_gzip = any(part.split(";")[0].strip().lower() == "gzip" for part in accepted.split(","))
    if not wants_gzip or len(body) <= GZIP_THRESHOLD_BYTES:
        return web.Response(body=body, content_type="application/json")
    response = web.Response(
        body=gzip.compress(body, compresslevel=1), content_type="application/json"
    )
    response.headers["Content-Encoding"] = "gzip"
    response.headers["Vary"] = "Accept-Encoding"
    return response


def _event_line(change: _Change, watcher: _Watcher) -> bytes | None:
    """The line this watcher gets for `change`, or None (selector transitions: protocol.md §4)."""
    kind = _event_type(change, watcher)
    return None if kind is None else _encode_event(kind, _event_object(change, kind))


def _event_type(change: _Change, watcher: _Watcher) -> str | None:
    """The type of the event this watcher gets for `change`, or None (not its kind, or outside
    its namespace or selector both before and after)."""
    if change.kind != watcher.kind:
        return None

    def passes(obj: RawObject | None) -> bool:
        if obj is None:
            return False
        if watcher.namespace is not None and obj["metadata"].get("namespace") != watcher.namespace:
            return False
        return _matches(change.kind, obj, watcher.selector)

    now = change.type != "DELETED" and passes(change.obj)
    before = change.type != "ADDED" and passes(change.prev)
    if now:
        return "MODIFIED" if before else "ADDED"
    return "DELETED" if before else None


def _event_object(change: _Change, kind: str) -> RawObject:
    """The object an event of type `kind` carries for `change` (the same for every watcher)."""
    if kind != "DELETED":
        return change.obj
    # The previous content, with the event's resourceVersion (cacher convertToWatchEvent).
    assert change.prev is not None
    obj = _clone(change.prev)
    obj["metadata"]["resourceVersion"] = str(change.rv)
    return obj


def _encode_event(kind: str, obj: RawObject) -> bytes:
    return orjson.dumps({"type": kind, "object": obj}) + b"\n"


def _clone(obj: RawObject) -> RawObject:
    """A deep copy (JSON objects only), several times faster than copy.deepcopy."""
    clone: RawObject = orjson.loads(orjson.dumps(obj))
    return clone


def _expired_status(requested: int, oldest: int) -> RawObject:
    return status_body(410, "Expired", f"too old resource version: {requested} ({oldest})")


def _parse_rv(text: str) -> int:
    if not text.isdigit():
        raise _StatusError(400, "BadRequest", f"invalid resource version {text!r}")
    return int(text)


def _int_param(query: Any, name: str, *, minimum: int) -> int:
    text = query.get(name, "")
    if text == "":
        return 0
    if not text.isdigit() or int(text) < minimum:
        raise _StatusError(400, "BadRequest", f"invalid {name} {text!r}")
    return int(text)


class RecordingSink:
    """An ObjectSink that keeps what it was told in a dict, keyed like the fake's `truth()`."""

    def __init__(self) -> None:
        self.objects: dict[str, RawObject] = {}
        self.replaces = 0

    def upsert(self, raw: RawObject) -> None:
        self.objects[_key(raw)] = raw

    def delete(self, raw: RawObject) -> None:
        self.objects.pop(_key(raw), None)

    def replace(self, raws: list[RawObject]) -> None:
        self.objects = {_key(raw): raw for raw in raws}
        self.replaces += 1

    def versions(self) -> dict[str, str]:
        """Key -> resourceVersion: equal to the fake's `versions()` when in sync."""
        return {key: obj["metadata"]["resourceVersion"] for key, obj in self.objects.items()}


def versions(objects: dict[str, RawObject]) -> dict[str, str]:
    """Key -> resourceVersion of a `truth()` answer."""
    return {key: obj["metadata"]["resourceVersion"] for key, obj in objects.items()}


async def eventually(condition: Callable[[], bool], *, within: float = 15.0) -> None:
    """Wait until `condition()` holds; the bound is a hang guard, not a performance claim."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {within} s")
        await asyncio.sleep(0.005)
