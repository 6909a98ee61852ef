"""Filter cost for pods with thousands of host ports (issue 14, item 3), in process.

Run: .venv/bin/python -m bench.many_ports. For N ports per pod: filter pod A (N declared
hostNetwork ports) over 5,000 nodes and hold its tentative reservation, then time filtering pod
B (N other ports) against it, as the server does (decode, filter, hold); then one pod whose
`hostports.dev/listen` has 100,000 entries; then a pod already on a node whose annotation is as
large as the API allows, indexed and removed. Prints the median of a few runs per line.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

from extender.core.cluster import Cluster
from extender.core.decisions import filter_pod
from extender.core.pods import ListenAnnotationError, decode_pod
from extender.settings import Settings

NODES = [f"node-{index:05d}" for index in range(5000)]
RUNS = 5


def _pod(name: str, first: int, count: int, listen: str | None = None) -> dict[str, Any]:
    ports = [{"containerPort": p} for p in range(first, first + count)]
    metadata: dict[str, Any] = {"name": name, "namespace": "bench", "uid": f"uid-{name}"}
    if listen is not None:
        metadata["annotations"] = {"hostports.dev/listen": listen}
    return {
        "metadata": metadata,
        "spec": {"hostNetwork": True, "containers": [{"name": "c", "ports": ports}]},
    }


def _filter(cluster: Cluster, raw: dict[str, Any]) -> int:
    """What the filter handler does for one call; returns how many nodes passed."""
    try:
        pod = decode_pod(raw, strict=True)
    except ListenAnnotationError:
        return 0
    verdict = filter_pod(cluster, pod, NODES)
    if verdict.passed:
        cluster.in_flight.hold(pod, verdict.passed, cluster.clock() + 15)
    return len(verdict.passed)


def _median_ms(run: Callable[[], object]) -> float:
    timings = []
    for _ in range(RUNS):
        started = time.perf_counter()
        run()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def main() -> None:
    print(f"filter over {len(NODES)} nodes, median of {RUNS} runs")
    for count in (1000, 5000, 10000):
        cluster = Cluster(Settings())
        _filter(cluster, _pod("a", 1, count))
        b = _pod("b", 30000, count)
        took = _median_ms(functools.partial(_filter, cluster, b))
        print(f"  pod B with {count:>6} ports after pod A with {count:>6}: {took:8.1f} ms")
    cluster = Cluster(Settings())
    listen = ",".join(f"{1 + index % 65535}/UDP" for index in range(100_000))
    huge = _pod("huge", 1, 0, listen)
    took = _median_ms(functools.partial(_filter, cluster, huge))
    print(f"  pod with a 100,000-entry listen annotation:     {took:8.1f} ms")
    print("a pod already on a node, annotation at the API's 256 KiB limit: upsert + delete")
    for label, listen in (
        (
            "12,000 addresses on 80",
            ",".join(f"80/UDP@10.0.{i // 256}.{i % 256}" for i in range(12000)),
        ),
        ("128,000 bare ports 1-9", ",".join(str(1 + i % 9) for i in range(128_000))),
    ):
        placed = _pod("placed", 1, 0, listen)
        placed["spec"]["nodeName"] = NODES[0]
        took = _median_ms(functools.partial(_place_and_remove, placed))
        print(f"  {label:<46}  {took:8.1f} ms")


def _place_and_remove(raw: dict[str, Any]) -> None:
    cluster = Cluster(Settings())
    cluster.pods.upsert(raw)
    cluster.pods.delete(raw)


if __name__ == "__main__":
    main()
