"""A relist taken a step at a time ends exactly where the all-at-once relist does."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.cluster import Cluster
from extender.settings import Settings
from tests.objects import pod, port

RawDict = dict[str, Any]


def variant(name: str, shape: int) -> RawDict:
    """One of a few pods called `name`: ports or none, different nodes, hostNetwork, finished."""
    return [
        pod(name, node="n1"),
        pod(name, node="n1", ports=[port(80, 80)]),
        pod(name, node="n2", ports=[port(80, 80)]),
        pod(name, node="n2", host_network=True, ports=[port(9100)]),
        pod(name, node="n1", annotations={"hostports.dev/listen": "8125/UDP"}, host_network=True),
        pod(name, node="n1", ports=[port(53, 53, "UDP")], phase="Succeeded"),
    ][shape]


def node(name: str, reserved: str) -> RawDict:
    return {"metadata": {"name": name, "annotations": {"hostports.dev/reserved": reserved}}}


def state(cluster: Cluster) -> tuple[Any, ...]:
    return (
        cluster.index.fingerprint(),
        sorted(cluster.pods_by_uid),
        sorted(cluster.nodes_known),
        cluster.index.spread_scores,
    )


def objects_held(cluster: Cluster) -> set[tuple[str, int]]:
    """Each held pod and known node with the identity of its record: what a step changes."""
    return {(uid, id(record)) for uid, record in cluster.pods_by_uid.items()} | {
        (name, id(known)) for name, known in cluster.nodes_known.items()
    }


pods_strategy = st.dictionaries(
    st.sampled_from([f"p{i}" for i in range(6)]), st.integers(0, 5), max_size=6
)
nodes_strategy = st.dictionaries(
    st.sampled_from(["n1", "n2", "n3"]), st.sampled_from(["22", "22,10250", "8125/UDP"])
)


@settings(max_examples=200, deadline=None)
@given(
    before=pods_strategy,
    after=pods_strategy,
    nodes_before=nodes_strategy,
    nodes_after=nodes_strategy,
)
def test_a_relist_in_steps_equals_the_relist_at_once(
    before: dict[str, int],
    after: dict[str, int],
    nodes_before: dict[str, str],
    nodes_after: dict[str, str],
) -> None:
    """Whatever was held before and whatever the list says, both ways end in the same state."""
    at_once, in_steps = Cluster(Settings()), Cluster(Settings())
    for cluster in (at_once, in_steps):
        cluster.nodes.replace([node(n, r) for n, r in nodes_before.items()])
        cluster.pods.replace([variant(name, shape) for name, shape in before.items()])
    pods = [variant(name, shape) for name, shape in after.items()]
    nodes = [node(n, r) for n, r in nodes_after.items()]
    at_once.nodes.replace(nodes)
    at_once.pods.replace(pods)
    vanished = len(set(nodes_before) - set(nodes_after)) + len(
        {name for name in before if in_steps.holds_pod(f"uid-{name}")} - set(after)
    )
    listed_nodes = [in_steps.nodes.compact(raw) for raw in nodes]
    listed_pods = [kept for raw in pods if (kept := in_steps.pods.compact(raw)) is not None]
    listed = len(listed_nodes) + len(listed_pods)
    steps = 0
    for step in (
        in_steps.nodes.replace_in_steps(listed_nodes),
        in_steps.pods.replace_in_steps(listed_pods),
    ):
        held = objects_held(in_steps)
        for _ in step:
            now = objects_held(in_steps)
            assert len(held ^ now) <= 2, "a step applied or released more than one object"
            held, steps = now, steps + 1
    assert steps >= listed + vanished  # a step per listed object, then per one released
    assert state(in_steps) == state(at_once)
    assert listed_nodes == []  # consumed: each object freed in its own step
    assert listed_pods == []


def test_between_steps_the_listed_ports_are_already_held() -> None:
    """Mid-relist the index holds the listed pods' ports; vanished pods go only at the end."""
    cluster = Cluster(Settings())
    cluster.pods.replace([pod("old", node="n1", ports=[port(80, 80)])])
    listed = cluster.pods.compact(pod("new", node="n2", ports=[port(81, 81)]))
    assert listed is not None
    steps = cluster.pods.replace_in_steps([listed])
    while not cluster.holds_pod("uid-new"):
        next(steps)
    held = {(c[0], c[1], c[3]) for c in cluster.index.fingerprint()}
    assert held == {("uid-old", "n1", 80), ("uid-new", "n2", 81)}
    assert list(steps)  # the release of "old" comes after, in steps of its own
    assert {(c[0], c[3]) for c in cluster.index.fingerprint()} == {("uid-new", 81)}


def test_a_relist_keeps_the_record_of_a_pod_whose_ports_did_not_change() -> None:
    """A listed pod the index holds in the same shape keeps its record (no second copy while
    the list is fetched); one whose ports changed is decoded again."""
    cluster = Cluster(Settings())
    same, moved = pod("same", node="n1", ports=[port(80, 80)]), pod("moved", node="n1")
    moved["spec"]["containers"][0]["ports"] = [port(81, 81)]
    cluster.pods.upsert(same)
    cluster.pods.upsert(moved)
    held = dict(cluster.pods_by_uid)
    moved["spec"]["containers"][0]["ports"] = [port(82, 82)]
    listed = [kept for raw in (same, moved) if (kept := cluster.pods.compact(raw)) is not None]
    assert len(listed) == 2
    assert listed[0][0] is held["uid-same"]
    assert listed[1][0] is not held["uid-moved"]
    list(cluster.pods.replace_in_steps(listed))
    assert cluster.pods_by_uid["uid-same"] is held["uid-same"]
    assert [claim.first for claim in cluster.pods_by_uid["uid-moved"].claims] == [82]
