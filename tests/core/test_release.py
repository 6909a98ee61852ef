"""Tentative reservations end as soon as the watch shows the scheduler gave up on the pod."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from extender.core.cluster import Cluster
from extender.core.decisions import filter_pod
from extender.core.pods import decode_pod
from extender.settings import Settings
from tests.objects import RawDict, pod, port

FILTERED_RV = "120"


def pending(rv: str = FILTERED_RV, **changes: object) -> RawDict:
    """Pod `a` wanting hostPort 80, as the scheduler sent it to filter (at `rv`)."""
    raw = pod("a", ports=[port(80, 80)], phase="Pending", **changes)  # type: ignore[arg-type]
    raw["metadata"]["resourceVersion"] = rv
    return raw


def unschedulable(rv: str) -> RawDict:
    raw = pending(rv)
    raw["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3"}
    ]
    return raw


def bound(rv: str, node: str) -> RawDict:
    raw = pending(rv, node=node)
    raw["status"]["phase"] = "Running"
    return raw


def scheduling_ok(rv: str) -> RawDict:
    raw = pending(rv)
    raw["metadata"]["labels"] = {"touched": "yes"}
    return raw


def upsert(raw: RawDict) -> Callable[[Cluster], None]:
    return lambda cluster: cluster.pods.upsert(raw)


@pytest.mark.parametrize(
    ("event", "released"),
    [
        (upsert(unschedulable("121")), True),
        (upsert(pending("121", deleting=True)), True),
        (lambda cluster: cluster.pods.delete(pending("121")), True),
        (upsert(bound("121", "n3")), True),
        (upsert(bound("121", "n1")), True),
        # The PodScheduled=False of the attempt before our filter, or a lagging watch: kept.
        (upsert(unschedulable(FILTERED_RV)), False),
        (upsert(unschedulable("119")), False),
        (upsert(unschedulable("opaque")), False),
        # Any other change of a pod still being scheduled: kept.
        (upsert(scheduling_ok("121")), False),
    ],
    ids=[
        "PodScheduled=False",
        "being-deleted",
        "deleted",
        "bound-elsewhere",
        "bound-here",
        "same-version",
        "older-version",
        "opaque-version",
        "other-change",
    ],
)
def test_watch_signals_release_the_tentative_reservation(
    event: Callable[[Cluster], None], released: bool
) -> None:
    """After A passed n1 and n2, which watch events free those nodes for B (wanting 80 too)."""
    cluster = Cluster(Settings())
    changes: list[None] = []
    cluster.on_change = lambda: changes.append(None)
    a = decode_pod(pending(), strict=True)
    cluster.in_flight.hold(a, ["n1", "n2"], expires=cluster.clock() + 60)
    b = decode_pod(pod("b", ports=[port(80, 80)]), strict=True)
    assert filter_pod(cluster, b, ["n1", "n2"]).passed == []
    event(cluster)
    assert (cluster.in_flight.get(a.uid) is None) is released
    assert bool(changes) is released
    passed = filter_pod(cluster, b, ["n1", "n2"]).passed
    # Once released, only the node A was bound to (if it is one of them) stays refused.
    held = cluster.index.claims_of(a.uid)
    free = [name for name in ("n1", "n2") if held is None or held[0] != name]
    assert passed == (free if released else [])
