"""The aiohttp application: the scheduler's verbs, health and readiness, and upkeep.

Thin: requests are decoded by `wire`, answered by `decisions` over the `Cluster`, encoded by
`wire`. Every error becomes a JSON `{"Error": ...}` with a 4xx/5xx status; no traceback ever
reaches the scheduler. The only waiting on the request path is a filter call that meets a
port an in-flight pod may take: it waits (bounded) for that pod's binding to settle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from extender import heap
from extender.core.cluster import Cluster
from extender.core.decisions import (
    FLAT_SCORE,
    FilterVerdict,
    filter_pod,
    filter_preemption,
    score_nodes,
)
from extender.core.pods import LastPodDecoder, ListenAnnotationError, PodPorts
from extender.core.ports import ClaimKind
from extender.errors import BindError, WireError
from extender.server import wire
from extender.server.binding import Binder
from extender.server.debug import add_debug_routes
from extender.server.metrics import METRICS_KEY, Metrics, timed
from extender.server.metrics import install as install_metrics
from extender.server.readiness import Readiness
from extender.server.telemetry import observe_cluster
from extender.settings import Settings

log = logging.getLogger(__name__)

CLUSTER = web.AppKey("cluster", Cluster)
SETTINGS = web.AppKey("settings", Settings)
BINDER = web.AppKey("binder", Binder)
READINESS = web.AppKey("readiness", Readiness)

SWEEP_INTERVAL_SECONDS = 1.0
JSON = "application/json"
VERBS = ("filter", "prioritize", "bind", "preempt")
BAD_ANNOTATION = "bad-annotation"
"""Rejection reason when the pod's own listen annotation cannot be parsed (every node)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ChangeNotifier:
    """Wakes filter calls waiting for an in-flight pod whenever a reservation settles."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, seconds: float) -> None:
        """Return at the next change, or after `seconds`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)


CHANGES = web.AppKey("changes", ChangeNotifier)
PODS = web.AppKey("pods", LastPodDecoder)


def create_app(
    cluster: Cluster,
    settings: Settings,
    *,
    binder: Binder,
    readiness: Readiness,
    metrics: Metrics | None = None,
) -> web.Application:
    """The extender application; background upkeep starts and stops with it.

    With `metrics`, requests are timed, rejections counted and GET /metrics served.
    """
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[guard],
    )
    app[CLUSTER] = cluster
    app[SETTINGS] = settings
    app[BINDER] = binder
    app[READINESS] = readiness
    notifier = ChangeNotifier()
    app[CHANGES] = notifier
    app[PODS] = LastPodDecoder()
    cluster.on_change = notifier.notify
    app.router.add_post("/filter", handle_filter)
    app.router.add_post("/prioritize", handle_prioritize)
    app.router.add_post("/bind", handle_bind)
    app.router.add_post("/preempt", handle_preempt)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    if metrics is not None:
        install_metrics(app, metrics, middleware=False)  # `guard` times the requests
        observe_cluster(metrics, cluster, readiness)
    add_debug_routes(app, cluster)
    app.router.add_route("*", "/{verb}", handle_unknown)
    app.cleanup_ctx.append(_upkeep)
    return app


async def _upkeep(app: web.Application) -> AsyncIterator[None]:
    """Expire reservations and stale observations, and refreeze the heap, while the app runs."""
    cluster = app[CLUSTER]

    async def sweep_forever() -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_SECONDS)
            cluster.sweep()

    async def refreeze_forever() -> None:
        while True:
            await asyncio.sleep(heap.REFREEZE_SECONDS)
            heap.refreeze()

    tasks = [
        asyncio.create_task(sweep_forever(), name="cluster-sweep"),
        asyncio.create_task(refreeze_forever(), name="heap-refreeze"),
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request passes through here, and only here: it is timed (with metrics), a body
    that declares a Content-Encoding is refused, the body is read within its deadline, and
    every failure answers JSON `{"Error": ...}`, never a traceback.

    One middleware, not four: each layer of aiohttp's chain is a call and a coroutine on every
    request (four no-op layers cost 15-25 us of CPU per request on this machine, against none),
    and the scheduler pays them serially for every pod.
    """
    return await timed(request.app.get(METRICS_KEY), request, _answer(request, handler))


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's answer, or the JSON Error that stands for its failure."""
    try:
        refused = _refuse_encoded(request)
        if refused is not None:
            return refused
        if request.can_read_body and not request.content.is_eof():
            unread = await _read_body(request)
            if unread is not None:
                return unread
        return await handler(request)
    except WireError as error:
        return _error(str(error), error.status)
    except web.HTTPRequestEntityTooLarge as error:
        limit = request.app[SETTINGS].max_body_bytes
        return _error(f"request body too large: {error.text} (limit {limit} bytes)", 413)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _error(f"{error.reason}: {request.method} {request.path}", error.status)
    except asyncio.CancelledError:
        raise
    except Exception as error:  # the last line of defence: log it, answer plainly
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(f"internal error ({type(error).__name__}); see the extender's log", 500)


IDENTITY = "identity"


def _refuse_encoded(request: web.Request) -> web.Response | None:
    """415 for a body that declares a Content-Encoding, before any of it is read.

    The kube-scheduler never compresses; decompressing would let a 255 KB gzip bomb expand to
    hundreds of megabytes before the body limit is checked. The server runs with
    `auto_decompress=False` (see `connections.server_options`), so nothing is inflated either.
    """
    declared = request.headers.getall("Content-Encoding", ())
    if not declared:
        return None
    codings = [c.strip().lower() for value in declared for c in value.split(",") if c.strip()]
    if all(coding == IDENTITY for coding in codings):
        return None
    shown = ", ".join(declared)[:64]
    return _error(
        f"Content-Encoding {shown!r} is not accepted: send the body uncompressed (identity)", 415
    )


async def _read_body(request: web.Request) -> web.Response | None:
    """Read a body that did not come whole with its head within `body_timeout_seconds`, else
    answer 408 (None once read: the handler's own `request.read()` returns these bytes).

    A client that stops sending mid-body is answered and its connection closed instead of held
    open for good. A body that came whole with its head (the scheduler's, nearly always) never
    gets here, so it costs no timer.
    """
    seconds = request.app[SETTINGS].body_timeout_seconds
    try:
        async with asyncio.timeout(seconds):
            await request.read()
    except ConnectionError:
        # The client hung up mid-body: routine (a scheduler timing out, a probe), one line.
        log.debug(
            "client %s went away mid-body of %s %s", request.remote, request.method, request.path
        )
        response = _error("client went away before sending the whole body", 400)
        response.force_close()
        return response  # nobody reads it; returning keeps aiohttp from logging an error
    except web.RequestPayloadError as error:
        raise WireError(f"malformed request body: {error}") from error
    except TimeoutError:
        log.debug(
            "request body of %s %s not received within %g s",
            request.method,
            request.path,
            seconds,
        )
        response = _error(f"request body not received within {seconds:g} s", 408)
        response.force_close()
        return response
    return None


def _error(message: str, status: int) -> web.Response:
    return web.Response(body=wire.encode_error(message), status=status, content_type=JSON)


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type=JSON)


def _is_ours(settings: Settings, pod: PodPorts) -> bool:
    return settings.scheduler_name is None or pod.scheduler_name == settings.scheduler_name


async def handle_filter(request: web.Request) -> web.Response:
    args = wire.decode_extender_args(await request.read())
    app = request.app
    cluster, settings = app[CLUSTER], app[SETTINGS]
    names = args.node_names
    try:
        pod = app[PODS].decode(args.raw_pod)
    except ListenAnnotationError as error:
        if METRICS_KEY in app:
            app[METRICS_KEY].count_rejections(BAD_ANNOTATION, len(names))
        return _json(wire.encode_filter_result(args, [], dict.fromkeys(names, str(error))))
    if not pod.wanted or not _is_ours(settings, pod):
        return _json(wire.encode_filter_result(args, names, {}))
    not_ready = app[READINESS].check()
    if not_ready is not None:
        if settings.fail_open:
            return _json(wire.encode_filter_result(args, names, {}))
        return _json(wire.encode_filter_error(args, f"hostport-extender not ready: {not_ready}"))

    verdict = filter_pod(cluster, pod, names)
    if verdict.in_flight:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.in_flight_wait_seconds
        while verdict.in_flight and (remaining := deadline - loop.time()) > 0:
            await app[CHANGES].wait(remaining)
            verdict = filter_pod(cluster, pod, names)
    rejected = verdict.final()
    passed = verdict.passed
    if rejected and METRICS_KEY in app:
        _count_rejections(app[METRICS_KEY], verdict, rejected)
    if passed:
        cluster.in_flight.hold(pod, passed, cluster.clock() + settings.in_flight_ttl_seconds)
    return _json(wire.encode_filter_result(args, passed, rejected))


_KIND_OF = operator.attrgetter("kind")


def _count_rejections(metrics: Metrics, verdict: FilterVerdict, rejected: dict[str, str]) -> None:
    # One counter update per kind, not per node: a filter over 5,000 nodes stays cheap.
    kinds = Counter(verdict.held_kinds or map(_KIND_OF, verdict.held.values()))
    in_flight_only = len(rejected) - len(verdict.held)
    if in_flight_only:
        kinds[ClaimKind.IN_FLIGHT] += in_flight_only
    for kind, count in kinds.items():
        metrics.count_rejections(kind.value, count)


async def handle_prioritize(request: web.Request) -> web.Response:
    args = wire.decode_extender_args(await request.read())
    app = request.app
    cluster, settings = app[CLUSTER], app[SETTINGS]
    try:
        pod = app[PODS].decode(args.raw_pod)
    except ListenAnnotationError:
        pod = None
    if (
        pod is None
        or not pod.wanted  # no opinion, whatever the index knows: no readiness check either
        or not _is_ours(settings, pod)
        or app[READINESS].check() is not None
    ):
        return _json(wire.encode_priorities(args.node_names, {}, FLAT_SCORE))
    scores = score_nodes(cluster, pod)
    return _json(
        wire.encode_priorities(args.node_names, scores.by_node, scores.default, scores.memo)
    )


async def handle_bind(request: web.Request) -> web.Response:
    args = wire.decode_binding_args(await request.read())
    cluster = request.app[CLUSTER]
    try:
        await request.app[BINDER].bind(args.pod_namespace, args.pod_name, args.pod_uid, args.node)
    except BindError as error:
        cluster.forget_in_flight(args.pod_uid)
        log.warning(
            "binding %s/%s to %s failed: %s", args.pod_namespace, args.pod_name, args.node, error
        )
        return _json(wire.encode_binding_result(str(error)))
    cluster.record_binding(args.pod_uid, args.node)
    return _json(wire.encode_binding_result())


async def handle_preempt(request: web.Request) -> web.Response:
    args = wire.decode_preemption_args(await request.read())
    app = request.app
    cluster, settings = app[CLUSTER], app[SETTINGS]
    try:
        pod = app[PODS].decode(args.raw_pod)
    except ListenAnnotationError:
        return _json(wire.encode_preemption_result({}))
    if not pod.wanted or not _is_ours(settings, pod):
        return _json(wire.encode_preemption_result(args.proposals))
    not_ready = app[READINESS].check()
    if not_ready is not None:
        return _error(f"hostport-extender not ready: {not_ready}", 503)
    return _json(wire.encode_preemption_result(filter_preemption(cluster, pod, args.proposals)))


async def handle_healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def handle_readyz(request: web.Request) -> web.Response:
    return readiness_response(request.app[READINESS])


def readiness_response(readiness: Readiness) -> web.Response:
    """200 "ok" when the index can be trusted, else 503 with the reason (for /readyz)."""
    not_ready = readiness.check()
    if not_ready is None:
        return web.Response(text="ok\n")
    return web.Response(text=f"not ready: {not_ready}\n", status=503)


async def handle_unknown(request: web.Request) -> web.Response:
    verb = request.match_info.get("verb", "")
    if verb in VERBS or verb in ("healthz", "readyz"):
        return _error(f"method {request.method} not allowed on /{verb}", 405)
    shown = verb if len(verb) <= 64 else f"{verb[:64]}..."  # a 4 KB path stays a short line
    return _error(f"unknown verb {shown!r}: this extender serves {', '.join(VERBS)}", 404)
