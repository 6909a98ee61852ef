"""Status updates of pods holding ports skip the decoder, and the cluster ends up the same."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.cluster import Cluster
from extender.core.pods import decode_pod, may_hold_ports, pod_uid
from extender.settings import Settings
from tests.objects import pod, port

RawDict = dict[str, Any]

SHAPES: list[RawDict] = [
    pod("p", node="", ports=[port(80, 80)]),
    pod("p", node="n1", ports=[port(80, 80)]),
    pod("p", node="n1", ports=[port(80, 80, "UDP")]),
    pod("p", node="n1", ports=[port(80, 80)], annotations={"hostports.dev/protected": "true"}),
    pod("p", node="n1", host_network=True, annotations={"hostports.dev/listen": "8125/UDP"}),
    pod("p", node="n1", host_network=True, annotations={"hostports.dev/listen": "8126"}),
    pod("p", node="n1", host_network=True),
    pod("p", node="n1", ports=[port(80, 80)], phase="Succeeded"),
    pod("p", node="n1", ports=[port(80, 80)], phase="Pending"),
    pod("p", node="n1"),
]


def with_status(raw: RawDict, tick: int) -> RawDict:
    """The same pod with a kubelet's status update (a condition's time moves)."""
    status = dict(raw["status"], conditions=[{"type": "Ready", "lastProbeTime": str(tick)}])
    return raw | {"status": status}


def reference_upsert(cluster: Cluster, raw: RawDict) -> None:
    """What the pod sink did before it remembered shapes: decode whenever it matters."""
    if may_hold_ports(raw) or pod_uid(raw) in cluster.pods_by_uid:
        cluster.apply_pod(decode_pod(raw))


def state(cluster: Cluster) -> tuple[Any, ...]:
    return (
        cluster.index.fingerprint(),
        dict(cluster.pods_by_uid),
        set(cluster.protected_uids),
        sorted(t.pod.uid for t in cluster.in_flight.all()),
        cluster.bound_reservations(),
    )


step = st.one_of(
    st.tuples(st.just("upsert"), st.integers(0, len(SHAPES) - 1)),
    st.tuples(st.just("delete"), st.just(0)),
    st.tuples(st.just("hold"), st.just(0)),
    st.tuples(st.just("bind"), st.sampled_from([0, 1])),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(step, min_size=1, max_size=12))
def test_remembered_shapes_never_change_what_the_cluster_holds(
    steps: list[tuple[str, int]],
) -> None:
    """Any mix of status updates, spec changes, deletions and reservations: same state."""
    fast, reference = Cluster(Settings()), Cluster(Settings())
    wanting = decode_pod(pod("p", ports=[port(80, 80)]))
    for tick, (action, argument) in enumerate(steps):
        for cluster in (fast, reference):
            if action == "hold":
                cluster.in_flight.hold(wanting, ["n1", "n2"], cluster.clock() + 60)
            elif action == "bind":
                cluster.record_binding(wanting.uid, ["n1", "n2"][argument])
            elif action == "delete":
                cluster.pods.delete(SHAPES[0])
        if action == "upsert":
            raw = with_status(SHAPES[argument], tick)
            fast.pods.upsert(raw)
            reference_upsert(reference, raw)
        assert state(fast) == state(reference)


def test_a_status_update_keeps_the_record_and_a_spec_change_replaces_it() -> None:
    """Same ports: the held record stays as it was; a moved listen port is decoded anew."""
    cluster = Cluster(Settings())
    cluster.pods.upsert(with_status(SHAPES[4], 1))
    held = cluster.pods_by_uid["uid-p"]
    cluster.pods.upsert(with_status(SHAPES[4], 2))
    assert cluster.pods_by_uid["uid-p"] is held
    cluster.pods.upsert(with_status(SHAPES[5], 3))
    assert [c.first for c in cluster.pods_by_uid["uid-p"].claims] == [8126]


def test_a_relist_remembers_shapes_for_the_status_updates_after_it() -> None:
    """After a relist, the first status update of a listed pod is recognised too."""
    cluster = Cluster(Settings())
    listed = cluster.pods.compact(with_status(SHAPES[1], 1))
    assert listed is not None
    list(cluster.pods.replace_in_steps([listed]))
    held = cluster.pods_by_uid["uid-p"]
    cluster.pods.upsert(with_status(SHAPES[1], 2))
    assert cluster.pods_by_uid["uid-p"] is held
    cluster.pods.upsert(with_status(SHAPES[2], 3))  # the port turns UDP
    assert [c.protocol for c in cluster.pods_by_uid["uid-p"].claims] == ["UDP"]
