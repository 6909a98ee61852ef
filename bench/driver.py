"""The HTTP driver: sends pre-encoded extender calls over keep-alive loopback and times them.

Serial mode is how the kube-scheduler calls a filter extender (one pod at a time, one connection);
it uses http.client because its per-call overhead is the smallest of the real clients, so the
figures are mostly server time. Concurrent mode uses aiohttp's client with N connections.

Servers are measured in alternating rounds (A B, B A, ...) so slow phases of a noisy shared machine
hit ours and the baseline alike: ratios from the same rounds are what we compare.
"""

from __future__ import annotations

import asyncio
import http.client
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench.servers import Server
from extender.heap import collector_paused

HEADERS = {
    "Content-Type": "application/json",
    "Accept-Encoding": "gzip",
    "User-Agent": "Go-http-client/1.1",
}
"""What the captured kube-scheduler sent (Host and Content-Length are added by the client)."""


class CallError(Exception):
    """A call did not get HTTP 200."""


@dataclass(frozen=True, slots=True)
class Call:
    """One request: a verb path and its encoded body."""

    path: str
    body: bytes


@dataclass(slots=True)
class Timings:
    """Latencies of one scenario on one server, with the wall time they took."""

    latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    errors: int = 0
    last_error: str = ""

    def percentile_ms(self, p: float) -> float:
        """The p-th percentile latency in milliseconds (nearest rank)."""
        return percentile(self.latencies_s, p) * 1000.0

    @property
    def calls_per_s(self) -> float:
        return len(self.latencies_s) / self.wall_s if self.wall_s > 0 else 0.0


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p% of values at or below it."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < p <= 100:
        raise ValueError(f"percentile {p} is outside (0, 100]")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100.0 * len(ordered)) - 1)]


class SerialClient:
    """One keep-alive connection to a server, as the scheduler's Go client keeps one."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._connection = http.client.HTTPConnection(server.host, server.port, timeout=60)

    def close(self) -> None:
        self._connection.close()

    def send(self, call: Call) -> bytes:
        """POST `call` and return the response body; CallError for any status but 200."""
        try:
            self._connection.request("POST", call.path, call.body, HEADERS)
            response = self._connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as error:
            self._connection.close()  # reconnects on the next request
            raise CallError(f"{self.server.name} {call.path}: {error!r}") from error
        if response.status != 200:
            raise CallError(
                f"{self.server.name} {call.path}: HTTP {response.status}: {data[:300]!r}"
            )
        return data

    def run(self, call: Call, count: int, timings: Timings) -> None:
        """Send `call` `count` times back to back, adding to `timings`."""
        clock = time.perf_counter
        with collector_paused():  # the client's own GC must not add to the latencies
            started = clock()
            for _ in range(count):
                before = clock()
                try:
                    self.send(call)
                except CallError as error:
                    timings.errors += 1
                    timings.last_error = str(error)
                    continue
                timings.latencies_s.append(clock() - before)
            timings.wall_s += clock() - started


def measure_serial(
    clients: Sequence[SerialClient], call: Call, count: int, rounds: int, warmup: int
) -> dict[str, Timings]:
    """`count` calls per server in `rounds` alternating rounds, after `warmup` untimed calls."""
    results = {client.server.name: Timings() for client in clients}
    for client in clients:
        client.run(call, warmup, Timings())
    per_round = max(1, count // rounds)
    for round_index in range(rounds):
        order = clients if round_index % 2 == 0 else list(reversed(clients))
        for client in order:
            client.run(call, per_round, results[client.server.name])
    return results


async def _concurrent(server: Server, call: Call, count: int, concurrency: int) -> Timings:
    timings = Timings()
    url = f"http://{server.host}:{server.port}{call.path}"
    connector = aiohttp.TCPConnector(limit=concurrency)
    remaining = count

    async with aiohttp.ClientSession(connector=connector, headers=HEADERS) as session:

        async def worker() -> None:
            nonlocal remaining
            clock = time.perf_counter
            while remaining > 0:
                remaining -= 1
                before = clock()
                try:
                    async with session.post(url, data=call.body) as response:
                        await response.read()
                        status = response.status
                except aiohttp.ClientError as error:
                    timings.errors += 1
                    timings.last_error = f"{server.name} {call.path}: {error!r}"
                    continue
                if status != 200:
                    timings.errors += 1
                    timings.last_error = f"{server.name} {call.path}: HTTP {status}"
                    continue
                timings.latencies_s.append(clock() - before)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
        timings.wall_s = time.perf_counter() - started
    return timings


def measure_concurrent(
    servers: Sequence[Server], call: Call, count: int, concurrency: int, rounds: int
) -> dict[str, Timings]:
    """`count` calls per server, `concurrency` in flight at once, in alternating rounds."""
    results = {server.name: Timings() for server in servers}
    per_round = max(concurrency, count // rounds)
    for round_index in range(rounds):
        order = servers if round_index % 2 == 0 else list(reversed(servers))
        for server in order:
            got = asyncio.run(_concurrent(server, call, per_round, concurrency))
            into = results[server.name]
            into.latencies_s += got.latencies_s
            into.wall_s += got.wall_s
            into.errors += got.errors
            into.last_error = got.last_error or into.last_error
    return results


def describe_answer(path: str, data: bytes) -> dict[str, Any]:
    """What a server decided, in a few numbers, so the report shows the work was real."""
    answer = orjson.loads(data)
    if path == "/filter":
        names = answer.get("NodeNames")
        nodes = answer.get("Nodes")
        passed = len(names) if names is not None else len((nodes or {}).get("items") or [])
        failed = len(answer.get("FailedNodes") or {}) + len(
            answer.get("FailedAndUnresolvableNodes") or {}
        )
        return {"passed": passed, "rejected": failed, "error": answer.get("Error") or ""}
    if path == "/prioritize":
        scores = [entry["Score"] for entry in answer]
        return {"scored": len(scores), "nonzero": sum(1 for s in scores if s)}
    if path == "/bind":
        return {"error": answer.get("Error") or ""}
    return {}
