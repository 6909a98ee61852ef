"""Read-only views of what the running extender believes: `who` and `audit` over its live cache.

`GET /debug/nodes/{name}[?port=PORT[/PROTO]]` answers what `hostport-extender who -o json` prints
and `GET /debug/conflicts[?ephemeral-range=FIRST-LAST]` what `audit -o json` prints (the same
schema), computed from the cluster state the scheduler's requests are answered from. Nothing
here changes that state. Owner switches of UDP ports come from the index's own history here;
finished pods are not kept by the extender.
"""

from __future__ import annotations

from collections.abc import Mapping
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


MAX_QUERY_VALUE = 64
"""Longest query value accepted: `30000-30100/TCP` and `32768-60999` are far shorter."""
MAX_NODE_NAME = 253
"""A Node's name is a DNS subdomain: at most 253 characters."""


def debug_node(cluster: Cluster, request: web.Request) -> web.Response:
    port = _query(request, ("port",)).get("port")
    name = request.match_info["name"]
    if len(name) > MAX_NODE_NAME:
        raise WireError(f"node name is {len(name)} characters long: at most {MAX_NODE_NAME}")
    try:
        query = parse_port_query(port) if port else None
        report = who(cluster, name, query)
    except UnknownNodeError as error:
        raise WireError(str(error), 404) from error
    except (ExtenderError, ValueError) as error:
        raise WireError(str(error)) from error
    return _json(report.as_json())


def debug_conflicts(cluster: Cluster, request: web.Request) -> web.Response:
    text = _query(request, ("ephemeral-range",)).get("ephemeral-range")
    try:
        ephemeral = parse_ephemeral_range(text) if text else DEFAULT_EPHEMERAL_RANGE
    except (ExtenderError, ValueError) as error:
        raise WireError(str(error)) from error
    return _json(audit(cluster, ephemeral).as_json())


def _query(request: web.Request, known: tuple[str, ...]) -> Mapping[str, str]:
    """The request's query parameters, each known, given once, and short; else a 400.

    Bounding the length first keeps every parser below (and its error message) cheap and short:
    `int()` refuses more than 4,300 digits with a ValueError, a 500 before this check.
    """
    query = request.query
    takes = ", ".join(known)
    for key in query:
        if key not in known:
            raise WireError(f"unknown query parameter {key[:MAX_QUERY_VALUE]!r}: {takes} only")
        if len(query.getall(key)) > 1:
            raise WireError(f"query parameter {key!r} given more than once")
        value = query[key]
        if len(value) > MAX_QUERY_VALUE:
            raise WireError(
                f"query parameter {key!r} is {len(value)} characters long: "
                f"at most {MAX_QUERY_VALUE}"
            )
    return query


def _json(data: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")
