"""Pods with thousands of host ports, over a real server: in-flight checks stay fast, and an
oversized `hostports.dev/listen` is refused with a reason that says so (issue 14, item 3).

The time bounds are generous for a shared machine; bench/many_ports.py prints the figures."""

from __future__ import annotations

import time

from extender.core.cluster import Cluster
from extender.core.pods import MAX_LISTEN_ENTRIES, decode_pod
from extender.settings import Settings
from tests.conftest import MakeExtender
from tests.objects import RawDict, filter_args, node, pod, port
from tests.server.test_http import post

NODES = [node(f"n{index}") for index in range(1, 4)]
NAMES = ["n1", "n2", "n3"]


def many_ports(name: str, first: int, count: int) -> RawDict:
    """A hostNetwork pod with `count` ports from `first`: the first 1,024 as undeclared
    listeners (the annotation's limit), the rest declared."""
    listen = min(count, MAX_LISTEN_ENTRIES)
    return pod(
        name,
        host_network=True,
        ports=[port(p) for p in range(first + listen, first + count)],
        annotations={
            "hostports.dev/listen": ",".join(str(p) for p in range(first, first + listen))
        },
    )


async def test_two_pods_with_5000_ports_each_answer_fast(make_extender: MakeExtender) -> None:
    """Filter A (5,000 ports), then B (5,000 others): B answers within a second and passes
    every node; C wanting one of A's ports is refused, the reason naming that port."""
    client, cluster = await make_extender(NODES, in_flight_wait_seconds=0)
    status, answer = await post(client, "filter", filter_args(many_ports("a", 10000, 5000), NAMES))
    assert (status, answer["NodeNames"]) == (200, NAMES)
    started = time.perf_counter()
    status, answer = await post(client, "filter", filter_args(many_ports("b", 20000, 5000), NAMES))
    elapsed = time.perf_counter() - started
    assert (status, answer["NodeNames"]) == (200, NAMES)
    assert elapsed < 1.0
    assert len(cluster.in_flight) == 2
    status, answer = await post(
        client, "filter", filter_args(pod("c", ports=[port(1, 1), port(14999, 14999)]), NAMES)
    )
    assert answer["NodeNames"] == []
    assert set(answer["FailedAndUnresolvableNodes"].values()) == {
        "14999/TCP on every address may be taken by pod default/a, which is being scheduled "
        "(in flight); retry after it binds"
    }


async def test_a_100k_entry_annotation_is_refused_quickly(make_extender: MakeExtender) -> None:
    """Every node is refused with a reason naming the limit, well under a second."""
    client, cluster = await make_extender(NODES)
    listen = ",".join(f"{1 + index % 65535}/UDP" for index in range(100_000))
    raw = pod("huge", host_network=True, annotations={"hostports.dev/listen": listen})
    started = time.perf_counter()
    status, answer = await post(client, "filter", filter_args(raw, NAMES))
    elapsed = time.perf_counter() - started
    assert status == 200
    assert answer["NodeNames"] == []
    assert set(answer["FailedAndUnresolvableNodes"].values()) == {
        "annotation hostports.dev/listen on pod default/huge has 100000 entries, more than the "
        "limit of 1024; merge ports into ranges (30000-30100)"
    }
    assert elapsed < 1.0
    assert len(cluster.in_flight) == 0


def test_a_placed_pod_over_the_limit_keeps_every_claim() -> None:
    """A pod already on a node really listens on every entry: all are kept, with a problem."""
    raw = many_ports("placed", 10000, MAX_LISTEN_ENTRIES)
    annotations = raw["metadata"]["annotations"]
    annotations["hostports.dev/listen"] += ",9999"
    raw["spec"]["nodeName"] = "n1"
    record = decode_pod(raw)
    assert len(record.claims) == MAX_LISTEN_ENTRIES + 1
    assert record.problems == (
        "annotation hostports.dev/listen on pod default/placed has 1025 entries, more than the "
        "limit of 1024; all kept for the pod already placed",
    )


def test_a_placed_pod_with_a_full_annotation_is_indexed_and_released_quickly() -> None:
    """The largest annotation the API accepts (256 KiB: 12,000 addresses on port 80, or 128,000
    bare ports) goes into the index and out again within a generous bound, each repeated entry
    claimed once (one pod's claims on one port were compared pairwise: minutes)."""
    for listen, claims in (
        (
            ",".join(f"80/UDP@10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(12_000)),
            12_000,
        ),
        (",".join(str(1 + i % 9) for i in range(128_000)), 9),
    ):
        cluster = Cluster(Settings())
        raw = pod(
            "placed", node="n1", host_network=True, annotations={"hostports.dev/listen": listen}
        )
        started = time.perf_counter()
        cluster.pods.upsert(raw)
        assert cluster.index.claim_count() == claims
        cluster.pods.delete(raw)
        assert time.perf_counter() - started < 2.0
        assert cluster.index.claim_count() == 0
