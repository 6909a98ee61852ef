"""Prometheus metrics of one extender process, on a registry of its own (never the global one).

Upstream kube-scheduler has no per-extender metrics, so what the operator sees of us is what we
export here: verb latency with sub-millisecond buckets (a filter answer is paid serially per pod),
rejections by claim kind, index size, informer health and reservations in flight. Values that exist
elsewhere (index size, readiness, informer ages) are read at scrape time through callables, so
the hot path never updates a gauge it does not have to.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from extender.server.readiness import Readiness

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""100 µs to 5 s: a healthy filter answers in well under 1 ms; 5 s is the scheduler's timeout."""

UNMATCHED = "unmatched"
OTHER = "other"
"""The verb label of requests a catch-all route answered (unknown verbs)."""

IndexSize = Callable[[], tuple[int, int]]
"""Returns (nodes, claims) of the port index."""

NodeConflicts = Callable[[], Mapping[str, int]]
"""Returns, per node, how many claims currently collide there (only nodes with a conflict)."""


class _ScrapeTimeState(Collector):
    """Gauges computed when Prometheus scrapes, from callables the application registers."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.index_size: IndexSize | None = None
        self.readiness: Readiness | None = None
        self.conflicts: NodeConflicts | None = None
        self.in_flight: Callable[[], int] | None = None
        self.api_answered_at: Callable[[], float] | None = None
        self.last_events: Callable[[], Mapping[str, float | None]] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.index_size is not None:
            nodes, claims = self.index_size()
            yield GaugeMetricFamily(
                "hostport_extender_index_nodes", "Nodes in the port index.", value=nodes
            )
            yield GaugeMetricFamily(
                "hostport_extender_index_claims",
                "Port claims (hostPort, hostNetwork, reserved, in flight) in the index.",
                value=claims,
            )
        if self.readiness is not None:
            yield GaugeMetricFamily(
                "hostport_extender_ready",
                "1 when the extender answers the scheduler from a complete index, else 0.",
                value=0 if self.readiness.check() else 1,
            )
        if self.in_flight is not None:
            yield GaugeMetricFamily(
                "hostport_extender_reservations_in_flight",
                "Pods holding ports between the scheduler's decision and the binding's arrival.",
                value=self.in_flight(),
            )
        if self.conflicts is not None:
            family = GaugeMetricFamily(
                "hostport_extender_node_conflicts",
                "Claims that collide on a node right now (only nodes with a conflict).",
                labels=["node"],
            )
            for node, count in sorted(self.conflicts().items()):
                family.add_metric([node], count)
            yield family
        if self.api_answered_at is not None:
            yield GaugeMetricFamily(
                "hostport_extender_api_server_last_answer_age_seconds",
                "Seconds since the API server last answered the extender's probe (live mode).",
                value=max(0.0, self.clock() - self.api_answered_at()),
            )
        last_events = self.last_events() if self.last_events is not None else {}
        if any(at is not None for at in last_events.values()):
            now = self.clock()
            family = GaugeMetricFamily(
                "hostport_extender_informer_last_event_age_seconds",
                "Seconds since the informer last received anything (list, event or bookmark).",
                labels=["resource"],
            )
            for resource, at in sorted(last_events.items()):
                if at is not None:
                    family.add_metric([resource], max(0.0, now - at))
            yield family


@dataclass(frozen=True, slots=True)
class Metrics:
    """The registry and every metric on it; build one with `new_metrics()` and pass it around."""

    registry: CollectorRegistry
    request_seconds: Histogram
    rejections: Counter
    relists: Counter
    watch_restarts: Counter
    admission_reviews: Counter
    _state: _ScrapeTimeState = field(repr=False)
    _timed: dict[tuple[object, int], Any] = field(default_factory=dict, repr=False)
    """(route resource, status) -> its child of `request_seconds`: `labels()` builds the label
    key each time (~2 us per request); the routes and statuses are a small, fixed set."""
    _rejected: dict[str, Any] = field(default_factory=dict, repr=False)
    """reason -> its child of `rejections`, for the same reason."""

    def time_request(self, request: web.Request, status: int, seconds: float) -> None:
        """Add one answered request to `hostport_extender_request_duration_seconds`."""
        key = (request.match_info.route.resource, status)
        child = self._timed.get(key)
        if child is None:
            child = self.request_seconds.labels(verb=_verb(request), code=str(status))
            self._timed[key] = child
        child.observe(seconds)

    def count_rejections(self, reason: str, nodes: int) -> None:
        """Add `nodes` rejected nodes of `reason` (a claim kind, or bad-annotation)."""
        child = self._rejected.get(reason)
        if child is None:
            child = self._rejected[reason] = self.rejections.labels(reason=reason)
        child.inc(nodes)

    def observe_last_events(self, last_events: Callable[[], Mapping[str, float | None]]) -> None:
        """Export `hostport_extender_informer_last_event_age_seconds` from `last_events()` (each
        resource's last list, event or bookmark on the metrics' clock; None: nothing yet) at
        each scrape. Read then, not told per event: a busy pod watch brings thousands a second.
        """
        self._state.last_events = last_events

    def observe_index(self, index_size: IndexSize) -> None:
        """Export index size from `index_size()` at each scrape."""
        self._state.index_size = index_size

    def observe_readiness(self, readiness: Readiness) -> None:
        """Export `hostport_extender_ready` from `readiness.check()` at each scrape."""
        self._state.readiness = readiness

    def observe_in_flight(self, in_flight: Callable[[], int]) -> None:
        """Export `hostport_extender_reservations_in_flight` from `in_flight()` at each scrape."""
        self._state.in_flight = in_flight

    def observe_api_answered(self, answered_at: Callable[[], float]) -> None:
        """Export how long ago the API server last answered, from `answered_at()` (the probe's
        clock, the same as this registry's) at each scrape."""
        self._state.api_answered_at = answered_at

    def observe_conflicts(self, conflicts: NodeConflicts) -> None:
        """Export live per-node conflicts from `conflicts()` at each scrape."""
        self._state.conflicts = conflicts


def new_metrics(clock: Callable[[], float] = time.monotonic) -> Metrics:
    """A fresh registry holding every metric of the extender and the webhook."""
    registry = CollectorRegistry(auto_describe=True)
    state = _ScrapeTimeState(clock)
    registry.register(state)
    return Metrics(
        registry=registry,
        request_seconds=Histogram(
            "hostport_extender_request_duration_seconds",
            "Time to answer an HTTP request, by route (filter, prioritize, bind, ...) and status.",
            ["verb", "code"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        rejections=Counter(
            "hostport_extender_filter_rejections",
            "Nodes rejected by filter, by the kind of claim that collided (a bounded set).",
            ["reason"],
            registry=registry,
        ),
        relists=Counter(
            "hostport_extender_informer_relists",
            "Complete lists the informer made (start, 410 Gone, errors).",
            ["resource"],
            registry=registry,
        ),
        watch_restarts=Counter(
            "hostport_extender_informer_watch_restarts",
            "Watches the informer had to open again after one ended or failed.",
            ["resource"],
            registry=registry,
        ),
        admission_reviews=Counter(
            "hostport_extender_admission_reviews",
            "AdmissionReviews the routing webhook answered, by decision.",
            ["decision"],
            registry=registry,
        ),
        _state=state,
    )


METRICS_KEY = web.AppKey("metrics", Metrics)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _verb(request: web.Request) -> str:
    # The route's path, never the raw URL: a scanner must not create a label value per path.
    resource = request.match_info.route.resource
    if resource is None:
        return UNMATCHED
    canonical = resource.canonical
    if "{" in canonical:
        return OTHER
    return canonical.strip("/") or "root"


async def timed(
    metrics: Metrics | None, request: web.Request, answer: Awaitable[web.StreamResponse]
) -> web.StreamResponse:
    """Await `answer` (the request's response) and time it into
    `hostport_extender_request_duration_seconds{verb,code}`, with the status sent; without
    `metrics`, only await it. Shared by `metrics_middleware` and the extender's own middleware
    (server/app.py `guard`, which times inside its one layer)."""
    if metrics is None:
        return await answer
    started = time.perf_counter()
    status: int | None = 500  # an exception that is not an HTTPException becomes a 500
    try:
        response = await answer
        status = response.status
        return response
    except web.HTTPException as error:  # below 400 where a middleware answers the rest
        status = error.status
        raise
    except asyncio.CancelledError:
        # The client went away: there is no answer to time, and the cancellation must go on.
        status = None
        raise
    finally:
        if status is not None:
            metrics.time_request(request, status, time.perf_counter() - started)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time every request into `hostport_extender_request_duration_seconds{verb,code}`."""
    return await timed(request.app[METRICS_KEY], request, handler(request))


async def metrics_handler(request: web.Request) -> web.Response:
    """GET /metrics in the Prometheus text format."""
    body = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def install(app: web.Application, metrics: Metrics, *, middleware: bool = True) -> None:
    """Hang `metrics` on `app`, serve GET /metrics and (`middleware`) time its requests with
    `metrics_middleware`; call before startup. An app whose own middleware awaits its answers
    through `timed` (the extender's, see server/app.py) passes `middleware=False`."""
    app[METRICS_KEY] = metrics
    if middleware:
        # Outermost, so the status timed is the one sent, after other middlewares turned
        # errors into answers.
        app.middlewares.insert(0, metrics_middleware)
    app.router.add_get("/metrics", metrics_handler)
