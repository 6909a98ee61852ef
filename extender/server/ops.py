"""The operations listener: /healthz, /readyz and /metrics for kubelet probes and Prometheus.

The scheduler reaches the extender on 127.0.0.1, but kubelet probes and Prometheus come in on
the pod IP. Serving the verbs there too would let anyone on the pod network ask the extender to
bind pods, so `serve --ops-listen` opens this second, read-only application instead.
"""

from __future__ import annotations

from aiohttp import web

from extender.server.app import readiness_response
from extender.server.metrics import Metrics, install
from extender.server.readiness import Readiness

OPS_READINESS = web.AppKey("ops_readiness", Readiness)


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process answers (liveness); says nothing about the index."""
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: 200 once the index can be trusted, else 503 with the reason."""
    return readiness_response(request.app[OPS_READINESS])


def create_ops_app(metrics: Metrics, readiness: Readiness) -> web.Application:
    """GET /healthz, /readyz and /metrics; nothing that changes state."""
    app = web.Application()
    app[OPS_READINESS] = readiness
    install(app, metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
