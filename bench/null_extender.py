"""The baseline: an extender on our stack (aiohttp + orjson, on uvloop) that decides nothing.

It parses every request body fully and answers as if every node fits, so its latency is what any
extender written on this stack pays for the protocol alone: HTTP, JSON in, JSON out. The benchmark
reports our server's figures as ratios to this one, measured in the same run on the same machine.

It runs on the event loop `serve` runs on by default (uvloop; `--event-loop asyncio` for the
standard library's), so the ratios compare our work, not our loop.

Run: `python -m bench.null_extender --listen 127.0.0.1:PORT` (prints a line when it listens).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import orjson
from aiohttp import web

from extender.eventloop import loop_factory, run
from extender.settings import EVENT_LOOPS

_JSON = "application/json"


async def _decode(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as error:
        raise web.HTTPBadRequest(text=f"request body is not JSON: {error}") from error
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="request body must be a JSON object")
    return body


def _answer(payload: object) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type=_JSON)


async def filter_nodes(request: web.Request) -> web.Response:
    """Let every node pass, in whichever shape (NodeNames or full Nodes) the scheduler sent."""
    args = await _decode(request)
    result: dict[str, Any] = {"FailedNodes": {}, "FailedAndUnresolvableNodes": {}, "Error": ""}
    if args.get("Nodes") is not None:
        result["Nodes"] = args["Nodes"]
    else:
        result["NodeNames"] = args.get("NodeNames") or []
    return _answer(result)


async def prioritize(request: web.Request) -> web.Response:
    """Score every node 0: the scheduler adds nothing to its own scores."""
    args = await _decode(request)
    nodes = args.get("Nodes")
    names = (
        [item["metadata"]["name"] for item in nodes.get("items") or []]
        if isinstance(nodes, dict)
        else args.get("NodeNames") or []
    )
    return _answer([{"Host": name, "Score": 0} for name in names])


async def bind(request: web.Request) -> web.Response:
    """Report success without calling any API server."""
    await _decode(request)
    return _answer({"Error": ""})


async def preempt(request: web.Request) -> web.Response:
    """Accept the scheduler's victims unchanged (always answered as UIDs, as the protocol wants)."""
    args = await _decode(request)
    meta = args.get("NodeNameToMetaVictims")
    if meta is None:
        meta = {
            node: {
                "Pods": [{"UID": pod["metadata"]["uid"]} for pod in victims.get("Pods") or []],
                "NumPDBViolations": victims.get("NumPDBViolations", 0),
            }
            for node, victims in (args.get("NodeNameToVictims") or {}).items()
        }
    return _answer({"NodeNameToMetaVictims": meta})


async def healthz(_: web.Request) -> web.Response:
    """Always healthy and ready: there is no state to wait for."""
    return web.Response(text="ok")


def create_app() -> web.Application:
    """The null extender's routes: the four verbs and the two probes our server has."""
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.add_routes(
        [
            web.post("/filter", filter_nodes),
            web.post("/prioritize", prioritize),
            web.post("/bind", bind),
            web.post("/preempt", preempt),
            web.get("/healthz", healthz),
            web.get("/readyz", healthz),
        ]
    )
    return app


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) -> (host, port), with a clear error for anything else."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"--listen wants HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port_text)


async def serve(host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then close connections cleanly."""
    runner = web.AppRunner(create_app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        print(f"null extender listening on http://{host}:{bound[1]}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.null_extender --listen HOST:PORT`."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.null_extender",
        description="A do-nothing scheduler extender on aiohttp + orjson: the benchmark baseline.",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:8899", help="HOST:PORT (default %(default)s)"
    )
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default=EVENT_LOOPS[0])
    args = parser.parse_args(argv)
    try:
        host, port = parse_listen(args.listen)
    except ValueError as error:
        parser.error(str(error))
    try:
        run(loop_factory(args.event_loop), serve(host, port))
    except OSError as error:
        print(f"null extender: cannot listen on {args.listen}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
