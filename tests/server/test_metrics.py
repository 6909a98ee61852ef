"""Metrics (own registry, verb latency, scrape-time gauges) and the log formats."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from extender import logs
from extender.server.metrics import LATENCY_BUCKETS, Metrics, install, new_metrics


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"NodeNames": ["n1"]})


async def _bad(request: web.Request) -> web.Response:
    raise web.HTTPBadRequest(text="bad body")


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("bug")


class _Readiness:
    def __init__(self) -> None:
        self.reason: str | None = "pods informer not synced"

    def check(self) -> str | None:
        return self.reason


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Metrics]]:
    metrics = new_metrics()
    app = web.Application()
    install(app, metrics)
    app.router.add_post("/filter", _ok)
    app.router.add_post("/bind", _bad)
    app.router.add_post("/preempt", _boom)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", metrics
    await runner.cleanup()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse an exposition into {(sample name, labels): value}, as Prometheus would."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(session: aiohttp.ClientSession, base: str) -> str:
    async with session.get(base + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


async def test_requests_are_timed_per_verb_and_status(served: tuple[str, Metrics]) -> None:
    """Each route gets its own series, by status; unknown paths share one 'unmatched' series."""
    base, _ = served
    async with aiohttp.ClientSession() as session:
        for path in ("/filter", "/filter", "/bind", "/preempt", "/no/such/path"):
            async with session.post(base + path, json={}) as response:
                await response.read()
        values = samples(await scrape(session, base))
    count = "hostport_extender_request_duration_seconds_count"
    assert values[(count, frozenset({("verb", "filter"), ("code", "200")}))] == 2
    assert values[(count, frozenset({("verb", "bind"), ("code", "400")}))] == 1
    assert values[(count, frozenset({("verb", "preempt"), ("code", "500")}))] == 1
    assert values[(count, frozenset({("verb", "unmatched"), ("code", "404")}))] == 1


async def test_latency_buckets_resolve_sub_millisecond_answers(
    served: tuple[str, Metrics],
) -> None:
    """The histogram has buckets below 1 ms, down to 100 µs, and up to the 5 s timeout."""
    base, _ = served
    async with aiohttp.ClientSession() as session:
        async with session.post(base + "/filter", json={}) as response:
            await response.read()
        values = samples(await scrape(session, base))
    bucket = "hostport_extender_request_duration_seconds_bucket"
    edges = sorted(
        float(dict(labels)["le"])
        for name, labels in values
        if name == bucket and dict(labels)["verb"] == "filter"
    )
    assert edges[:3] == [0.0001, 0.00025, 0.0005]
    assert edges[-2:] == [5.0, float("inf")]
    assert len(LATENCY_BUCKETS) == len(edges) - 1


async def test_scrape_time_gauges_read_the_application(served: tuple[str, Metrics]) -> None:
    """Index size, readiness, live conflicts and informer age come from callables at scrape."""
    base, _ = served
    now = [1000.0]
    clocked = new_metrics(clock=lambda: now[0])
    readiness = _Readiness()
    clocked.observe_index(lambda: (3, 17))
    clocked.observe_readiness(readiness)
    clocked.observe_conflicts(lambda: {"n2": 2})
    clocked.observe_last_events(lambda: {"pods": 1000.0, "nodes": None})
    now[0] = 1042.5
    clocked.rejections.labels(reason="hostNetwork").inc(4)
    clocked.relists.labels(resource="pods").inc()
    clocked.watch_restarts.labels(resource="nodes").inc(2)
    clocked.observe_in_flight(lambda: 1)

    values = samples(generate_latest(clocked.registry).decode())
    assert values[("hostport_extender_index_nodes", frozenset())] == 3
    assert values[("hostport_extender_index_claims", frozenset())] == 17
    assert values[("hostport_extender_ready", frozenset())] == 0
    assert values[("hostport_extender_node_conflicts", frozenset({("node", "n2")}))] == 2
    age = ("hostport_extender_informer_last_event_age_seconds", frozenset({("resource", "pods")}))
    assert values[age] == 42.5
    nodes_age = (
        "hostport_extender_informer_last_event_age_seconds",
        frozenset({("resource", "nodes")}),
    )
    assert nodes_age not in values  # nothing listed or watched yet
    rejected = ("hostport_extender_filter_rejections_total", frozenset({("reason", "hostNetwork")}))
    assert values[rejected] == 4
    assert (
        values[("hostport_extender_informer_relists_total", frozenset({("resource", "pods")}))] == 1
    )
    restarts = (
        "hostport_extender_informer_watch_restarts_total",
        frozenset({("resource", "nodes")}),
    )
    assert values[restarts] == 2
    assert values[("hostport_extender_reservations_in_flight", frozenset())] == 1

    readiness.reason = None
    values = samples(generate_latest(clocked.registry).decode())
    assert values[("hostport_extender_ready", frozenset())] == 1
    # The served app's own registry saw none of this: registries are not shared.
    async with aiohttp.ClientSession() as session:
        assert "hostport_extender_index_nodes" not in await scrape(session, base)


def test_metrics_stay_off_the_global_registry() -> None:
    """Two instances coexist (no duplicate-timeseries error) and the default registry is clean."""
    first, second = new_metrics(), new_metrics()
    first.rejections.labels(reason="hostPort").inc()
    assert second.registry is not first.registry
    assert (
        REGISTRY.get_sample_value(
            "hostport_extender_filter_rejections_total", {"reason": "hostPort"}
        )
        is None
    )
    assert (
        second.registry.get_sample_value(
            "hostport_extender_filter_rejections_total", {"reason": "hostPort"}
        )
        is None
    )


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _log_line(log_format: str, level: str, emit: str) -> str:
    stream = io.StringIO()
    logs.configure(log_format, level, stream)
    logger = logging.getLogger("extender.test")
    if emit == "exception":
        try:
            raise ValueError("port 80 taken")
        except ValueError:
            logger.exception("bind failed", extra={"pod": "apps/web-1", "node": "n1"})
    else:
        logger.info("filter answered", extra={"pod": "apps/web-1", "feasible": 3})
        logger.debug("not shown at info")
    return stream.getvalue()


def test_json_logs_are_one_object_per_line_with_extra_fields() -> None:
    """--log-format json: one JSON object a line; `extra=` fields become keys."""
    text = _log_line("json", "info", "info")
    lines = text.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "info"
    assert record["logger"] == "extender.test"
    assert record["msg"] == "filter answered"
    assert record["pod"] == "apps/web-1"
    assert record["feasible"] == 3
    assert record["ts"].endswith("+00:00")


def test_json_logs_keep_a_traceback_inside_one_line() -> None:
    """An exception's traceback goes into the `exc` field of the same single line."""
    lines = _log_line("json", "info", "exception").splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "error"
    assert "ValueError: port 80 taken" in record["exc"]
    assert record["node"] == "n1"


def test_text_logs_and_levels() -> None:
    """--log-format text is human-readable; --log-level debug shows debug lines."""
    text = _log_line("text", "debug", "info")
    assert "INFO extender.test: filter answered" in text
    assert "DEBUG extender.test: not shown at info" in text


@pytest.mark.parametrize(
    ("log_format", "level", "message"),
    [("xml", "info", "log format 'xml'"), ("json", "loud", "log level 'loud'")],
)
def test_bad_log_settings_are_named(log_format: str, level: str, message: str) -> None:
    """An unknown format or level raises ValueError naming it."""
    with pytest.raises(ValueError, match=message):
        logs.configure(log_format, level, io.StringIO())
