"""Is the API server answering us right now? A cheap periodic request that must be answered.

An open watch that delivers nothing proves nothing: a SIGSTOPped or wedged API server keeps the
connection open and silent, and so does our own process while it is frozen (SIGSTOP, a long GC
pause), after which the socket buffers hold news we have not applied. So one probe (a `limit=1`
LIST of nodes, see `KubeApi.probe`) goes out every few seconds, never per event, and:

- `status()` says when the server last answered; readiness refuses to say "current" once that
  is longer ago than the staleness bound;
- when answers come back after any failure, `on_recovered(resync=False)` lets the informers cut
  a backoff short (a server that rejected us for a while must not cost another 30 s of waiting);
- when the silence was longer than the staleness bound (the server stalled, or we were frozen),
  `on_recovered(resync=True)` makes the informers restart their watches, and the readiness waits
  until each has shown it is live again (see `Informer.status().current_since`).

Clock and sleep are injectable, like the informer's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from extender.kube.informer import Sleep
from extender.kube.kubeapi import KubeApi, KubeApiError

log = logging.getLogger(__name__)

MAX_PROBE_INTERVAL = 5.0
"""Probe at least this often (seconds); with a small staleness bound, four times per bound."""
FAILING_PROBE_INTERVAL = 0.5
"""While the server does not answer, probe this often, so its return is seen within a second."""


def probe_interval(staleness_seconds: float) -> float:
    """Every few seconds, and at least four times per staleness bound."""
    return min(MAX_PROBE_INTERVAL, staleness_seconds / 4)


@dataclass(frozen=True, slots=True)
class ProbeStatus:
    """What the last probes showed, for readiness."""

    answered_at: float
    """When the server last answered a probe (the probe's start until the first answer)."""
    last_error: str | None
    """Why the latest probe failed; None when it was answered."""
    resync_after: float | None
    """After a silence longer than the staleness bound: the informers' watches must have shown
    they are live since this time before the index counts as current again."""


class ApiProbe:
    """Runs the probe until cancelled; `status()` is read by readiness."""

    def __init__(
        self,
        api: KubeApi,
        *,
        staleness_seconds: float,
        on_recovered: Callable[[bool], None],
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._api = api
        self._staleness = staleness_seconds
        self._interval = probe_interval(staleness_seconds)
        self._timeout = max(1.0, min(staleness_seconds, 30.0))
        self._on_recovered = on_recovered
        self._clock = clock
        self._sleep = sleep
        self._answered_at = clock()
        self._last_error: str | None = None
        self._resync_after: float | None = None

    def status(self) -> ProbeStatus:
        return ProbeStatus(self._answered_at, self._last_error, self._resync_after)

    async def run(self) -> None:
        """Probe forever: every interval while answered, every 0.5 s while not."""
        while True:
            answered = await self.probe_once()
            await self._sleep(self._interval if answered else FAILING_PROBE_INTERVAL)

    async def probe_once(self) -> bool:
        """Send one probe and record the outcome; True if the server answered."""
        try:
            await self._api.probe(within=self._timeout)
        except KubeApiError as error:
            if self._last_error is None:
                log.warning("the API server does not answer the probe: %s", error)
            self._last_error = str(error)
            return False
        now = self._clock()
        silent_for = now - self._answered_at
        failed = self._last_error is not None
        # Both in one step, with no await between them: readiness never sees the fresh answer
        # without the resync it demands.
        self._answered_at = now
        self._last_error = None
        resync = silent_for > self._staleness
        if resync:
            self._resync_after = now
            log.warning(
                "the API server answers again after %.1f s without an answer; "
                "restarting the watches",
                silent_for,
            )
        elif failed:
            log.info("the API server answers the probe again")
        if resync or failed:
            self._on_recovered(resync)
        return True
