"""Live mode: the informers, readiness and binder that connect the extender to a cluster.

`Live` owns one API connection, the two informers feeding `cluster.pods`/`cluster.nodes` and the
probe that checks the API server answers (extender/kube/probe.py); `Live.run_informers` is an
aiohttp cleanup_ctx, so they start and stop with the app. `LiveReadiness` is what /readyz and a
fail-closed filter consult; `ApiBinder` POSTs bindings.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence

from aiohttp import web

from extender.core.cluster import Cluster
from extender.errors import BindError
from extender.heap import loading
from extender.kube.informer import NODES, PODS, Informer, InformerObserver, Sleep
from extender.kube.kubeapi import ApiStatusError, KubeApi, KubeApiError
from extender.kube.kubeauth import Connection, load_connection
from extender.kube.probe import ApiProbe
from extender.server.app import create_app
from extender.server.metrics import Metrics
from extender.settings import Settings

log = logging.getLogger(__name__)


class LiveReadiness:
    """Ready once every informer has synced, and while the index is known to be current.

    A short outage does not flip readiness: the index is still nearly right and the watch
    resumes from its resourceVersion. Past `staleness_seconds` the index may be missing pods
    that took ports meanwhile, so filter answers Error (fail closed) or passes (fail open).
    "Past the bound" is any of: a watch failing that long; the API server not answering the
    probe that long (a stall: connections open, nothing flows); and after such a silence, or a
    freeze of our own process, until every watch has shown it is live again.
    """

    def __init__(
        self,
        informers: Sequence[Informer],
        *,
        staleness_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        probe: ApiProbe | None = None,
    ) -> None:
        self._informers = informers
        self._staleness = staleness_seconds
        self._clock = clock
        self._probe = probe

    def check(self) -> str | None:
        for informer in self._informers:
            status = informer.status()
            reason = f": {status.last_error}" if status.last_error else ""
            if not status.synced:
                return f"{status.resource} informer not synced yet{reason}"
            if status.broken_since is not None:
                broken_for = self._clock() - status.broken_since
                if broken_for > self._staleness:
                    return (
                        f"{status.resource} watch broken for {broken_for:.0f} s "
                        f"(staleness bound {self._staleness:g} s){reason}"
                    )
        if self._probe is None:
            return None
        probe = self._probe.status()
        silent_for = self._clock() - probe.answered_at
        if silent_for > self._staleness:
            why = probe.last_error or "the probe is still waiting for an answer"
            return (
                f"the API server has not answered for {silent_for:.0f} s "
                f"(staleness bound {self._staleness:g} s): {why}"
            )
        if probe.resync_after is not None:
            for informer in self._informers:
                since = informer.status().current_since
                if since is None or since < probe.resync_after:
                    return (
                        f"{informer.resource.name} watch not yet shown live after the API "
                        "server was silent (or this process paused) past the staleness bound"
                    )
        return None


class ApiBinder:
    """Binds through the API server; every failure becomes a BindError the scheduler shows.

    Nothing is retried here: a 409 means the pod is already bound (or was recreated under the
    same name, caught by the UID precondition), and a retry would only repeat it; for anything
    else the scheduler's own retry, with a fresh decision, is the better one.
    """

    def __init__(self, api: KubeApi) -> None:
        self._api = api

    async def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        what = f"binding pod {namespace}/{name} to node {node}"
        try:
            await self._api.create_binding(namespace, name, uid, node)
        except ApiStatusError as error:
            raise BindError(f"{what}: {error.status} {error.reason}: {error.message}") from error
        except KubeApiError as error:
            raise BindError(f"{what}: {error}") from error


class Live:
    """The live-mode parts that share one API connection."""

    def __init__(
        self,
        connection: Connection,
        cluster: Cluster,
        *,
        staleness_seconds: float = 60.0,
        watch_timeout: int = 300,
        page_size: int = 500,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        observer: InformerObserver | None = None,
        compression: bool = False,
    ) -> None:
        """`compression`: ask the API server to gzip its lists (Settings.api_compression)."""
        self.api = KubeApi(connection, compression=compression, component="serve")
        self._cluster = cluster
        rng = rng or random.Random()
        informer = functools.partial(
            Informer,
            self.api,
            watch_timeout=watch_timeout,
            page_size=page_size,
            clock=clock,
            sleep=sleep,
            rng=rng,
            observer=observer,
        )
        self.pods = informer(
            PODS, cluster.pods, skippable=cluster.pods.skippable, listable=cluster.pods.listable
        )
        self.nodes = informer(NODES, cluster.nodes)
        self.probe = ApiProbe(
            self.api, staleness_seconds=staleness_seconds, on_recovered=self._wake, clock=clock
        )
        self.readiness = LiveReadiness(
            (self.pods, self.nodes),
            staleness_seconds=staleness_seconds,
            clock=clock,
            probe=self.probe,
        )
        self.binder = ApiBinder(self.api)

    def _wake(self, resync: bool) -> None:
        """The probe was answered again: informers retry now (and restart their watches)."""
        for informer in (self.pods, self.nodes):
            informer.wake(restart_watch=resync)

    async def run_informers(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: open the connection and run the informers and the probe."""
        await self.api.open()
        tasks = [
            asyncio.create_task(informer.run(), name=f"informer-{informer.resource.name}")
            for informer in (self.pods, self.nodes)
        ]
        tasks.append(asyncio.create_task(self.probe.run(), name="api-probe"))
        tasks.append(asyncio.create_task(self._freeze_heap_once_synced(), name="heap-freeze"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, Exception):
                    log.error("informer ended with an error", exc_info=outcome)
            await self.api.close()

    async def _freeze_heap_once_synced(self) -> None:
        """Hold the collector off during the first full sync, then freeze the loaded cluster."""
        with loading(collect=False):  # requests are being answered: no full collection
            # A one-off wait on status the informers expose without an event: two polls a second.
            while not (self.pods.status().synced and self.nodes.status().synced):  # noqa: ASYNC110
                await asyncio.sleep(0.5)
            self._cluster.settle()


def create_live_app(
    settings: Settings,
    *,
    kubeconfig: str | None,
    context: str | None,
    metrics: Metrics | None = None,
) -> tuple[web.Application, LiveReadiness, str]:
    """The extender app fed by a cluster, its readiness, and which cluster (for the banner)."""
    connection = load_connection(kubeconfig, context)
    cluster = Cluster(settings)
    observer = MetricsObserver(metrics) if metrics is not None else None
    live = Live(
        connection,
        cluster,
        staleness_seconds=settings.staleness_seconds,
        observer=observer,
        compression=settings.api_compression,
    )
    if metrics is not None:
        probe = live.probe
        metrics.observe_api_answered(lambda: probe.status().answered_at)
        informers = (live.pods, live.nodes)
        metrics.observe_last_events(
            lambda: {i.resource.name: i.status().last_event_at for i in informers}
        )
    app = create_app(
        cluster, settings, binder=live.binder, readiness=live.readiness, metrics=metrics
    )
    app.cleanup_ctx.append(live.run_informers)
    return app, live.readiness, f"the cluster at {connection.server} ({connection.source})"


class MetricsObserver:
    """Feeds the informers' progress into the Prometheus metrics (extender/server/metrics.py)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def listed(self, resource: str) -> None:
        self._metrics.relists.labels(resource=resource).inc()

    def watch_restarted(self, resource: str) -> None:
        self._metrics.watch_restarts.labels(resource=resource).inc()
