"""Ingest and memory: load a big cluster into the index, then apply watch events, in one process.

Run as its own process (`python -m bench.ingest ...`, prints one JSON line) so that peak RSS
(VmHWM) is the index's and not the driver's. Objects arrive as the informer gets them: pages of
500 encoded as the API server writes a list, cut into items and decoded the way `KubeApi.list_all`
does (extender/kube/listpage.py; for pods, only the items `cluster.pods.listable` accepts), and
fed one by one to the cluster's sinks, so no more than one page of raw objects is alive at a time;
generating and encoding a page is not timed. Watch events are pre-decoded dicts fed to
`cluster.pods.upsert/delete`.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import orjson

from bench.generate import ClusterSpec, RawObject, generate_node, generate_pods_for_node
from extender.core.cluster import Cluster
from extender.heap import loading
from extender.kube.listpage import Refused, cut_list, kept_items
from extender.settings import Settings

PAGE = 500
"""Objects per list page, as client-go's pager asks for."""


def rss_mb() -> float:
    """Resident memory now (from /proc, Linux)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 1e6


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far: VmHWM, the high-water mark of its memory.

    Not `getrusage().ru_maxrss`: on Linux that survives fork and exec, so a child started by a
    big parent (our driver holds megabytes of request bodies) reports the parent's peak.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one ingest run measured."""

    nodes: int
    pods: int
    pods_with_host_ports: int
    decode_s: float
    index_s: float
    rss_before_mb: float
    rss_after_mb: float
    peak_rss_mb: float
    events: int
    events_s: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.events_s if self.events_s > 0 else 0.0


def _pages(objects: Iterator[RawObject], kind: str) -> Iterator[bytes]:
    page: list[RawObject] = []
    for raw in objects:
        page.append({key: value for key, value in raw.items() if key not in _TYPE_META})
        if len(page) == PAGE:
            yield _list_bytes(kind, page)
            page = []
    if page:
        yield _list_bytes(kind, page)


_TYPE_META = ("kind", "apiVersion")
"""Left out of list items, as the API server does (the list's own kind says it)."""


def _list_bytes(kind: str, items: list[RawObject]) -> bytes:
    return orjson.dumps(
        {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}
    )


def _decode_page(page: bytes, keep: Callable[[bytes], bool] | None) -> list[RawObject]:
    """The items `list_all` would hand the informer (cut, filtered, decoded; else whole)."""
    cut = cut_list(page)
    if cut is not None:
        items = [item for item in kept_items(cut, keep) if not isinstance(item, Refused)]
        whole = [item for item in items if item is not None]
        if len(whole) == len(items):
            return whole
    decoded: list[RawObject] = orjson.loads(page)["items"]
    return decoded


def _feed(
    pages: Iterator[bytes],
    upsert: Callable[[RawObject], None],
    keep: Callable[[bytes], bool] | None = None,
) -> tuple[float, float]:
    """Decode and apply every page; (seconds decoding, seconds in the index)."""
    decode_s = index_s = 0.0
    clock = time.perf_counter
    for page in pages:
        started = clock()
        raws = _decode_page(page, keep)
        decoded = clock()
        for raw in raws:
            upsert(raw)
        done = clock()
        decode_s += decoded - started
        index_s += done - decoded
    return decode_s, index_s


def _all_pods(spec: ClusterSpec) -> Iterator[RawObject]:
    for index in range(spec.nodes):
        yield from generate_pods_for_node(spec, index)


def watch_events(spec: ClusterSpec, count: int) -> list[tuple[str, RawObject]]:
    """`count` events on pods the cluster holds, the mix a busy cluster's pod watch delivers.

    Mostly MODIFIED (status and resourceVersion churn), and some pods replaced: DELETED, then
    ADDED under a new UID on the same node, as a ReplicaSet would.
    """
    rng = random.Random(f"{spec.seed}:events")
    nodes = rng.sample(range(spec.nodes), min(spec.nodes, 200))
    # Events share their pods' spec and status to keep this process's memory the index's.
    pool = [raw for node in nodes for raw in generate_pods_for_node(spec, node)]
    events: list[tuple[str, RawObject]] = []
    resource_version = 100_000_000
    while pool and len(events) < count:
        rng.shuffle(pool)
        for raw in pool:
            resource_version += 1
            metadata = raw["metadata"]
            if rng.random() < 0.1:
                events.append(("DELETED", raw))
                fresh = dict(metadata, uid=f"{metadata['uid'][:-12]}{resource_version:012d}")
                fresh["resourceVersion"] = str(resource_version)
                events.append(("ADDED", dict(raw, metadata=fresh)))
            else:
                modified = dict(metadata, resourceVersion=str(resource_version))
                events.append(("MODIFIED", dict(raw, metadata=modified)))
    return events[:count]


def load(spec: ClusterSpec) -> tuple[Cluster, float, float]:
    """A fresh Cluster holding `spec`, fed page by page; (cluster, decode s, index s).

    Under the same collector policy as the extender's initial sync (`extender.heap.loading`).
    """
    cluster = Cluster(Settings())
    with loading():
        node_pages = _pages((generate_node(spec, index) for index in range(spec.nodes)), "NodeList")
        node_decode_s, node_index_s = _feed(node_pages, cluster.nodes.upsert)
        pod_decode_s, pod_index_s = _feed(
            _pages(_all_pods(spec), "PodList"), cluster.pods.upsert, cluster.pods.listable
        )
    return cluster, node_decode_s + pod_decode_s, node_index_s + pod_index_s


def run(spec: ClusterSpec, event_count: int) -> IngestResult:
    """Load `spec` into a fresh Cluster page by page, then apply `event_count` watch events."""
    rss_before = rss_mb()
    cluster, decode_s, index_s = load(spec)
    rss_after = rss_mb()
    peak = peak_rss_mb()

    events = watch_events(spec, event_count)
    upsert, delete = cluster.pods.upsert, cluster.pods.delete
    started = time.perf_counter()
    for kind, raw in events:
        if kind == "DELETED":
            delete(raw)
        else:
            upsert(raw)
    events_s = time.perf_counter() - started
    return IngestResult(
        nodes=spec.nodes,
        pods=spec.pods,
        pods_with_host_ports=len(cluster.pods_by_uid),
        decode_s=decode_s,
        index_s=index_s,
        rss_before_mb=rss_before,
        rss_after_mb=rss_after,
        peak_rss_mb=peak,
        events=len(events),
        events_s=events_s,
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.ingest --nodes N --pods-per-node M --events K`: one JSON line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description="Time loading a synthetic cluster into the index; report peak RSS.",
    )
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods-per-node", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args(argv)
    try:
        spec = ClusterSpec(args.nodes, args.pods_per_node, args.seed)
    except ValueError as error:
        parser.error(str(error))
    result = run(spec, args.events)
    line = asdict(result) | {"events_per_s": result.events_per_s}
    sys.stdout.buffer.write(orjson.dumps(line) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
