"""Read-only views of what the running extender believes: `who` and `audit` over its live cache.

`GET /debug/nodes/{name}[?port=PORT[/PROTO]]` answers what `hostport-extender who -o json` prints
and `GET /debug/conflicts[?ephemeral-range=FIRST-LAST]` what `audit -o json` prints (the same
schema), computed from the cluster state the scheduler's requests are answered from. Nothing
here changes that state. Owner switches of UDP ports come from the index's own history here;
finished pods are not kept by the extender.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from extender.core.cluster import Cluster
from extender.errors import ExtenderError, WireError
from extender.tools.audit import DEFAULT_EPHEMERAL_RANGE, audit, parse_ephemeral_range
from extender.tools.who import UnknownNodeError, parse_port_query, who


def add_debug_routes(app: web.Application, cluster: Cluster) -> None:
    """Register the read-only debug views of `cluster` on the extender's application."""

    async def handle_debug_node(request: web.Request) -> web.Response:
        return debug_node(cluster, request)

    async def handle_debug_conflicts(request: web.Request) -> web.Response:
        return debug_conflicts(cluster, request)

    app.router.add_get("/debug/nodes/{name}", handle_debug_node)
    app.router.add_get("/debug/conflicts", handle_debug_conflicts)


def debug_node(cluster: Cluster, request: web.Request) -> web.Response:
    port = request.query.get("port")
    try:
        query = parse_port_query(port) if port else None
        report = who(cluster, request.match_info["name"], query)
    except UnknownNodeError as error:
        raise WireError(str(error), 404) from error
    except ExtenderError as error:
        raise WireError(str(error)) from error
    return _json(report.as_json())


def debug_conflicts(cluster: Cluster, request: web.Request) -> web.Response:
    text = request.query.get("ephemeral-range")
    try:
        ephemeral = parse_ephemeral_range(text) if text else DEFAULT_EPHEMERAL_RANGE
    except ExtenderError as error:
        raise WireError(str(error)) from error
    return _json(audit(cluster, ephemeral).as_json())


def _json(data: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")
