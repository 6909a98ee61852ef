"""List, then watch, then relist on 410: keeps one ObjectSink equal to the API server's truth.

The loop imitates client-go's Reflector (protocol.md §5.5) where it matters for a port index:

- paginated LIST (consistent snapshot), `sink.replace(items)`, so objects that vanished while
  we were away release their ports (the sink diffs; the Python client's informer does not); a
  SteppedSink gets each item in its compact form as the pages arrive, and the list in steps;
- WATCH from the list's resourceVersion with `allowWatchBookmarks=true` and a server timeout of
  `watch_timeout * [1, 2)`; every event moves the resourceVersion, BOOKMARK moves only that;
- 410 Gone (HTTP status, ERROR event, or an expired continue token) relists at once from a
  fresh consistent list (no resourceVersion), never after a backoff; only a server that answers
  410 to MAX_GONE_IN_A_ROW fresh lists in a row, with no progress between, is backed off from;
- everything else (refused, reset, 429, 5xx, a garbage line, a too-short watch) backs off with
  jitter, 0.8 s doubling to 30 s, and resumes the watch from the last resourceVersion; a list
  or watch that works resets the backoff;
- each watch has a deadline: the server promised to end it after `timeoutSeconds`; one still
  open WATCH_GRACE_SECONDS later is wedged and is restarted;
- `wake()` (the API probe, extender/kube/probe.py, saw the server answer again) cuts a backoff
  short, and with `restart_watch` also ends the open watch so a new one proves it is live;
- the state is exposed (`status()`) for readiness and metrics.

Clock, sleep and randomness are injectable so tests run fast and deterministic.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from extender.core.sinks import ObjectSink, RawObject, SteppedSink
from extender.heap import collector_paused, freeze_heap
from extender.kube.kubeapi import (
    ApiStatusError,
    ItemFilter,
    KubeApi,
    KubeApiError,
    LineFilter,
    RawEvent,
    WatchStreamError,
    as_listed,
)
from extender.kube.slices import Slices

log = logging.getLogger(__name__)

HEALTHY_WATCH_SECONDS = 1.0
"""A watch that delivered no event counts as working once it has stayed open this long."""
WATCH_GRACE_SECONDS = 2.0
"""How long past its `timeoutSeconds` a watch may stay open before it counts as wedged."""
MAX_GONE_IN_A_ROW = 3
"""410s in a row (each after a fresh list) relisted at once; more back off, so a broken server
that answers 410 to everything does not get a full list in a tight loop."""
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Resource:
    """What to list and watch."""

    name: str
    path: str
    field_selector: str = ""


PODS = Resource("pods", "/api/v1/pods", "status.phase!=Succeeded,status.phase!=Failed")
"""Pods that can hold ports: finished pods leave the stream as DELETED (protocol.md §4)."""
NODES = Resource("nodes", "/api/v1/nodes")


@dataclass(frozen=True, slots=True)
class InformerStatus:
    """A consistent view of one informer's state, for /readyz and metrics."""

    resource: str
    synced: bool
    """A full list has been delivered to the sink at least once."""
    resource_version: str | None
    last_event_at: float | None
    relists: int
    """Lists after the first one (410s, expired continue tokens)."""
    watch_restarts: int
    broken_since: float | None
    """When talking to the server started failing; None while the list/watch is healthy."""
    last_error: str | None
    sink_errors: int
    current_since: float | None = None
    """Since when the informer demonstrably follows the server: the start of its last complete
    list, or the opening of a watch that has been open HEALTHY_WATCH_SECONDS; None if neither."""


class Backoff:
    """0.8 s doubling to 30 s, each delay stretched by up to `jitter` (25%) so replicas spread."""

    def __init__(
        self,
        rng: random.Random,
        *,
        initial: float = 0.8,
        cap: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.25,
    ) -> None:
        self._rng = rng
        self._initial, self._cap, self._factor, self._jitter = initial, cap, factor, jitter
        self._next = initial

    def next(self) -> float:
        """The delay before the next attempt (and double the one after)."""
        delay = self._next
        self._next = min(self._cap, self._next * self._factor)
        return delay * (1.0 + self._jitter * self._rng.random())

    def reset(self) -> None:
        """Called after progress, so the next failure waits 0.8 s again."""
        self._next = self._initial


Sleep = Callable[[float], Awaitable[None]]


class InformerObserver(Protocol):
    """Told about an informer's progress as it happens (metrics); must return at once."""

    def listed(self, resource: str) -> None:
        """A complete list reached the sink (the first one included)."""

    def watch_restarted(self, resource: str) -> None:
        """A watch is opened again after one ended or failed."""


class _NoObserver:
    def listed(self, resource: str) -> None:
        pass

    def watch_restarted(self, resource: str) -> None:
        pass


class Informer:
    """The only writer of one sink; `run()` until cancelled."""

    def __init__(
        self,
        api: KubeApi,
        resource: Resource,
        sink: ObjectSink,
        *,
        watch_timeout: int = 300,
        page_size: int = 500,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        observer: InformerObserver | None = None,
        skippable: LineFilter | None = None,
        listable: ItemFilter | None = None,
    ) -> None:
        """`skippable` reads raw watch lines before they are decoded (kubeapi.WatchStream);
        `listable` raw list items (KubeApi.list_all's `keep`)."""
        self.resource = resource
        self._skippable = skippable
        self._listable = listable
        self._observer = observer or _NoObserver()
        self._api = api
        self._sink = sink
        self._watch_timeout = watch_timeout
        self._page_size = page_size
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._backoff = Backoff(self._rng)
        self._rv: str | None = None
        self._synced = False
        self._last_event_at: float | None = None
        self._relists = 0
        self._watch_restarts = 0
        self._broken_since: float | None = None
        self._watch_opened_at: float | None = None
        self._last_watch_healthy = False
        self._last_error: str | None = None
        self._sink_errors = 0
        self._gone_streak = 0
        self._listed_at: float | None = None
        self._wakeable: asyncio.Timeout | None = None
        """The backoff sleep or watch in progress, which `wake()` may end early."""
        self._watching = False
        self._woken = False
        self._watch_events = 0
        """Events the open watch delivered so far."""

    def status(self) -> InformerStatus:
        return InformerStatus(
            resource=self.resource.name,
            synced=self._synced,
            resource_version=self._rv,
            last_event_at=self._last_event_at,
            relists=self._relists,
            watch_restarts=self._watch_restarts,
            broken_since=self._current_break(),
            last_error=self._last_error,
            sink_errors=self._sink_errors,
            current_since=self._current_since(),
        )

    def wake(self, *, restart_watch: bool) -> None:
        """The server answers again: retry now instead of finishing a backoff.

        With `restart_watch`, an open watch is ended too and reopened from its resourceVersion:
        after a silence (a stalled server, our own process frozen) the old connection may be
        dead or hold stale news, and only a new watch that stays open shows the index is live.
        """
        wakeable = self._wakeable
        if wakeable is None or (self._watching and not restart_watch):
            return
        self._woken = True
        self._wakeable = None  # a second wake before this one lands must not reschedule again
        wakeable.reschedule(asyncio.get_running_loop().time())

    async def run(self) -> None:
        """List and watch forever; returns only by cancellation (or a bug, which is recorded)."""
        try:
            await self._loop()
        except Exception as error:
            # Not handled on purpose: an unforeseen failure must end up in the log and make
            # readiness fail after the staleness bound, not be retried in a loop.
            self._broken_since = self._broken_since or self._clock()
            self._last_error = f"informer stopped: {error!r}"
            raise

    async def _loop(self) -> None:
        while True:
            try:
                if self._rv is None:
                    await self._relist()
                await self._watch_until_deadline()
                self._restarting()
            except ApiStatusError as error:
                if not error.gone:
                    await self._failed(error, error.retry_after)
                    continue
                log.info("%s: %s; relisting", self.resource.name, error)
                self._rv = None
                self._gone_streak += 1
                if self._gone_streak > MAX_GONE_IN_A_ROW:
                    await self._failed(error, None)
            except KubeApiError as error:
                await self._failed(error, None)

    async def _watch_until_deadline(self) -> None:
        """One watch, ended early by its deadline or by `wake(restart_watch=True)`."""
        timeout = int(self._watch_timeout * (1.0 + self._rng.random()))
        self._woken = False
        self._watching = True
        try:
            async with asyncio.timeout(timeout + WATCH_GRACE_SECONDS) as wakeable:
                self._wakeable = wakeable
                await self._watch(timeout)
        except TimeoutError:
            if self._woken:
                log.info("%s: restarting the watch to show it is live", self.resource.name)
                return
            raise WatchStreamError(
                f"watch {self.resource.path}: still open {WATCH_GRACE_SECONDS:g} s after its "
                f"timeoutSeconds={timeout}; the connection is wedged"
            ) from None
        finally:
            self._wakeable = None
            self._watching = False

    def _current_since(self) -> float | None:
        opened = self._watch_opened_at
        if opened is not None and self._clock() - opened >= HEALTHY_WATCH_SECONDS:
            return max(opened, self._listed_at or opened)
        return self._listed_at

    def _current_break(self) -> float | None:
        """When the informer stopped following the server, or None while it follows it.

        A watch counts as following once it has delivered an event or stayed open for
        HEALTHY_WATCH_SECONDS; merely opening one does not, or a proxy that accepts and then
        drops every watch would keep the extender "ready" forever.
        """
        opened = self._watch_opened_at
        if opened is not None and self._clock() - opened >= HEALTHY_WATCH_SECONDS:
            return None
        return self._broken_since

    def _progressed(self) -> None:
        """Events or a healthy watch arrived: the next failure starts the backoff over."""
        self._backoff.reset()
        self._gone_streak = 0
        self._broken_since = None

    async def _failed(self, error: KubeApiError, retry_after: float | None) -> None:
        now = self._clock()
        if self._current_break() is None or self._last_watch_healthy:
            self._broken_since = now
        self._last_watch_healthy = False
        self._last_error = str(error)
        delay = self._backoff.next()
        if retry_after is not None:
            delay = max(delay, retry_after)
        log.warning("%s: %s; retrying in %.1f s", self.resource.name, error, delay)
        self._woken = False
        try:
            async with asyncio.timeout(None) as wakeable:
                self._wakeable = wakeable
                await self._sleep(delay)
        except TimeoutError:
            if not self._woken:
                raise
            log.info("%s: the API server answers again; retrying now", self.resource.name)
        finally:
            self._wakeable = None
        if self._rv is not None:
            self._restarting()

    def _restarting(self) -> None:
        self._watch_restarts += 1
        self._observer.watch_restarted(self.resource.name)

    async def _relist(self) -> None:
        started = self._clock()
        # Until it is applied, a list of 10^5 pods is ~10^7 live objects: a full collection
        # among them stalled every request for ~0.45 s (bench.busy's relist probe). They hold
        # no cycles, and reference counting frees them once the list is applied.
        with collector_paused():
            if isinstance(self._sink, SteppedSink):
                listed, rv = await self._list(self._compact_with(self._sink))
                count = len(listed)
                await self._replace_in_slices(self._sink, listed)  # empties listed as it goes
                del listed
            else:
                items, rv = await self._list(as_listed)
                count = len(items)
                self._feed(self._sink.replace, items)
                del items
            # What the list added lives on (the index records): out of the collector's reach,
            # or the first young collection afterwards scans all of it at once (a 65-72 ms
            # stall after relisting 30,000 pods) and a full one later does again.
            freeze_heap(collect=False)
        if self._synced:
            self._relists += 1
        self._synced = True
        self._rv = rv
        self._listed_at = started
        self._backoff.reset()
        self._broken_since = None
        self._last_event_at = self._clock()
        self._observer.listed(self.resource.name)
        log.info("%s: listed at resourceVersion %s, %d to apply", self.resource.name, rv, count)

    async def _watch(self, server_timeout: int) -> None:
        """One watch from the current RV until the server ends it cleanly; errors raise."""
        assert self._rv is not None
        params = {"resourceVersion": self._rv, "allowWatchBookmarks": "true"}
        if self.resource.field_selector:
            params["fieldSelector"] = self.resource.field_selector
        started = self._clock()
        stream = await self._api.open_watch(
            self.resource.path, params, timeout_seconds=server_timeout, skippable=self._skippable
        )
        self._watch_opened_at = started
        self._watch_events = 0
        try:
            async with stream:
                await stream.run(self._on_event, self._on_skipped)
        finally:
            events = self._watch_events
            self._last_watch_healthy = (
                events > 0 or self._clock() - started >= HEALTHY_WATCH_SECONDS
            )
            self._watch_opened_at = None
        if events == 0:
            if self._clock() - started < HEALTHY_WATCH_SECONDS:
                raise WatchStreamError(f"watch {self.resource.path}: very short watch, no events")
            self._progressed()

    def _on_event(self, event: RawEvent) -> None:
        """Each event of the open watch, as it arrives (in the connection's callback)."""
        self._apply(event)
        if self._watch_events == 0:
            self._progressed()
        self._watch_events += 1

    def _on_skipped(self, resource_version: str) -> None:
        """A line the sink's `skippable` answered: only the resourceVersion moves (as for a
        BOOKMARK, without building one: most lines of a busy cluster's pod watch come here)."""
        self._rv = resource_version
        self._last_event_at = self._clock()
        if self._watch_events == 0:
            self._progressed()
        self._watch_events += 1

    def _apply(self, event: RawEvent) -> None:
        kind = event["type"]
        raw_object: RawObject = event["object"]
        if kind == "ERROR":
            raise ApiStatusError.from_status(raw_object)
        if kind in ("ADDED", "MODIFIED"):
            self._feed(self._sink.upsert, raw_object)
        elif kind == "DELETED":
            self._feed(self._sink.delete, raw_object)
        elif kind != "BOOKMARK":
            raise WatchStreamError(f"watch {self.resource.path}: unknown event type {kind!r}")
        metadata = raw_object.get("metadata")
        rv = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        if isinstance(rv, str) and rv:
            self._rv = rv
        self._last_event_at = self._clock()

    async def _list(self, convert: Callable[[RawObject], _T | None]) -> tuple[list[_T], str]:
        """The resource's full list (a consistent snapshot), each item as `convert` keeps it."""
        return await self._api.list_converted(
            self.resource.path,
            convert,
            field_selector=self.resource.field_selector,
            limit=self._page_size,
            keep=self._listable,
        )

    def _compact_with(self, sink: SteppedSink[_T]) -> Callable[[RawObject], _T | None]:
        """`sink.compact`, where a listed object it chokes on is logged, counted and left out
        (as a watch event would be, see `_feed`) rather than ending the list."""

        def compact(raw: RawObject) -> _T | None:
            try:
                return sink.compact(raw)
            except Exception:
                self._sink_errors += 1
                log.exception("%s: the sink rejected a listed object", self.resource.name)
                return None

        return compact

    async def _replace_in_slices(self, sink: SteppedSink[_T], listed: list[_T]) -> None:
        """Hand a list over a step at a time, yielding to requests every SLICE_SECONDS of work."""
        slices = Slices()
        try:
            for _ in sink.replace_in_steps(listed):
                await slices.yield_if_due()
        except Exception:
            self._sink_errors += 1
            log.exception("%s: the sink rejected a list", self.resource.name)

    def _feed(self, method: Callable[[_T], None], argument: _T) -> None:
        """Hand one update to the sink; a bad object is logged and counted, never fatal.

        The API server validated these objects; if our decoder still chokes on one, stopping the
        informer would freeze every other node's ports, which is worse than skipping one object.
        """
        try:
            method(argument)
        except Exception:
            self._sink_errors += 1
            log.exception("%s: the sink rejected an update", self.resource.name)
