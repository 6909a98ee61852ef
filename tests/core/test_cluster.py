"""The cluster state: sinks, relist diffs, bindings, reservations and node observations."""

from __future__ import annotations

import time

from extender.core.cluster import Cluster
from extender.core.decisions import filter_pod
from extender.core.inflight import InFlight
from extender.core.pods import decode_pod, in_flight_owner, observed_owner
from extender.settings import Settings
from tests.objects import node, pod, port


class Clock:
    def __init__(self) -> None:
        self.mono = 100.0
        self.wall = 1_800_000_000.0

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall


def make_cluster(clock: Clock | None = None, **settings: object) -> Cluster:
    clock = clock or Clock()
    return Cluster(Settings(**settings), clock=clock.monotonic, wall_clock=clock.time)  # type: ignore[arg-type]


def rejected(cluster: Cluster, raw_pod: dict[str, object], nodes: list[str]) -> dict[str, str]:
    return filter_pod(cluster, decode_pod(raw_pod, strict=True), set(nodes)).final()


def test_relist_releases_pods_that_vanished() -> None:
    """replace() diffs against what is known: missing pods release their ports."""
    cluster = make_cluster()
    cluster.pods.replace(
        [pod("a", node="n1", ports=[port(80, 80)]), pod("b", node="n2", ports=[port(80, 80)])]
    )
    assert set(rejected(cluster, pod("new", ports=[port(80, 80)]), ["n1", "n2"])) == {"n1", "n2"}
    cluster.pods.replace([pod("b", node="n2", ports=[port(80, 80)])])
    assert set(rejected(cluster, pod("new", ports=[port(80, 80)]), ["n1", "n2"])) == {"n2"}


def test_events_update_and_delete() -> None:
    """upsert follows a pod to its phase; delete releases it."""
    cluster = make_cluster()
    cluster.pods.upsert(pod("a", node="n1", ports=[port(80, 80)]))
    cluster.pods.upsert(pod("a", node="n1", ports=[port(80, 80)], phase="Succeeded"))
    assert rejected(cluster, pod("new", ports=[port(80, 80)]), ["n1"]) == {}
    cluster.pods.upsert(pod("b", node="n1", ports=[port(80, 80)]))
    cluster.pods.delete(pod("b", node="n1", ports=[port(80, 80)]))
    assert rejected(cluster, pod("new", ports=[port(80, 80)]), ["n1"]) == {}
    assert cluster.index.claim_count() == 0


def test_nodes_reserved_ports_and_node_removal() -> None:
    """A node's reserved annotation blocks its ports; removing the node releases them."""
    cluster = make_cluster()
    cluster.nodes.replace([node("n1", {"hostports.dev/reserved": "10250"}), node("n2")])
    reasons = rejected(
        cluster, pod("kubelet-ish", host_network=True, ports=[port(10250)]), ["n1", "n2"]
    )
    assert list(reasons) == ["n1"]
    assert "reserved by a host daemon on the node" in reasons["n1"]
    cluster.nodes.delete(node("n1"))
    assert rejected(cluster, pod("x", host_network=True, ports=[port(10250)]), ["n1"]) == {}


def test_observed_listeners_count_unless_explained_or_stale() -> None:
    """Agent observations are node claims, except ports a pod there explains, until stale."""
    clock = Clock()
    cluster = make_cluster(clock, observed_stale_seconds=300)
    stamp = "2027-01-15T08:00:00Z"
    clock.wall = 1_800_000_000.0 + 10  # 2027-01-15T08:00:10Z
    cluster.nodes.upsert(
        node("n1", {"hostports.dev/observed": "9100,2703", "hostports.dev/observed-at": stamp})
    )
    cluster.pods.upsert(pod("exporter", node="n1", host_network=True, ports=[port(9100)]))
    reasons = rejected(cluster, pod("agent", host_network=True, ports=[port(2703)]), ["n1"])
    assert "observed listening on the host" in reasons["n1"]
    # 9100 is explained by the exporter pod: the rejection names the pod, not the observation.
    reasons = rejected(cluster, pod("other", host_network=True, ports=[port(9100)]), ["n1"])
    assert "hostNetwork pod default/exporter" in reasons["n1"]
    # Once the agent has not reported for longer than the bound, its observations stop counting.
    clock.wall += 301
    cluster.sweep()
    assert cluster.observation_is_stale("n1")
    assert rejected(cluster, pod("agent", host_network=True, ports=[port(2703)]), ["n1"]) == {}


def test_observations_beside_a_pod_with_thousands_of_claims_stay_cheap() -> None:
    """An agent reporting 3,000 listeners on a node where one pod holds 10,000 ports: the pod's
    events there cost little (observed x claims took seconds), and the split stays exact."""
    clock = Clock()
    cluster = make_cluster(clock, observed_stale_seconds=300)
    clock.wall = 1_800_000_000.0 + 10
    observed = ",".join(str(p) for p in range(20_000, 23_000))
    cluster.nodes.upsert(
        node(
            "n1",
            {
                "hostports.dev/observed": observed,
                "hostports.dev/observed-at": "2027-01-15T08:00:00Z",
            },
        )
    )
    big = pod("big", node="n1", host_network=True, ports=[port(p) for p in range(12_000, 22_000)])
    started = time.perf_counter()
    for _ in range(3):
        cluster.pods.upsert(big)
    assert time.perf_counter() - started < 2.0
    observed_claims = cluster.index.claims_of(observed_owner("n1"))
    assert observed_claims is not None
    assert [c.first for c in observed_claims[1]] == list(range(22_000, 23_000))


def test_binding_in_live_mode_holds_a_reservation_until_the_watch_shows_the_pod() -> None:
    """record_binding reserves the ports on the node; the pod's own event replaces it."""
    cluster = make_cluster()
    a = pod("a", ports=[port(80, 80)])
    record = decode_pod(a, strict=True)
    cluster.in_flight.hold(record, ["n1", "n2"], expires=1e9)
    cluster.record_binding(record.uid, "n1")
    assert cluster.index.claims_of(in_flight_owner(record.uid)) is not None
    reasons = rejected(cluster, pod("b", ports=[port(80, 80)]), ["n1", "n2"])
    assert list(reasons) == ["n1"]
    assert "being bound to this node" in reasons["n1"]
    cluster.pods.upsert(pod("a", node="n1", ports=[port(80, 80)]))
    assert cluster.index.claims_of(in_flight_owner(record.uid)) is None
    assert cluster.bound_reservations() == 0
    assert list(rejected(cluster, pod("b", ports=[port(80, 80)]), ["n1", "n2"])) == ["n1"]


def test_bound_reservations_expire() -> None:
    """A reservation the watch never confirms is dropped after its time to live."""
    clock = Clock()
    cluster = make_cluster(clock, bound_reservation_ttl_seconds=30)
    record = decode_pod(pod("a", ports=[port(80, 80)]), strict=True)
    cluster.in_flight.hold(record, ["n1"], expires=clock.mono + 5)
    cluster.record_binding(record.uid, "n1")
    clock.mono += 31
    cluster.sweep()
    assert rejected(cluster, pod("b", ports=[port(80, 80)]), ["n1"]) == {}


def test_snapshot_binding_makes_the_pod_hold_its_ports() -> None:
    """apply_binding (snapshot mode) turns the filtered pod into a bound pod."""
    cluster = make_cluster()
    record = decode_pod(pod("a", ports=[port(80, 80)]), strict=True)
    cluster.in_flight.hold(record, ["n1"], expires=1e9)
    cluster.apply_binding(record.uid, "n1")
    cluster.record_binding(record.uid, "n1")
    assert cluster.bound_reservations() == 0
    assert cluster.index.claims_of(record.uid) is not None
    assert list(rejected(cluster, pod("b", ports=[port(80, 80)]), ["n1"])) == ["n1"]


def test_problems_are_reported_once(caplog: object) -> None:
    """A malformed annotation is logged once, however many events repeat it."""
    cluster = make_cluster()
    for _ in range(3):
        cluster.nodes.upsert(node("n1", {"hostports.dev/reserved": "nope"}))
    assert cluster.stats.problems_seen == 1


def test_tentative_reservations_are_bounded_oldest_first() -> None:
    """A storm of filtered pods that never bind keeps at most the newest reservations."""
    in_flight = InFlight(max_entries=3)
    records = [decode_pod(pod(f"p{i}", ports=[port(80, 80)]), strict=True) for i in range(5)]
    for record in records[:3]:
        in_flight.hold(record, ["n1"], expires=1e9)
    in_flight.hold(records[0], ["n1"], expires=1e9)  # refreshed: now the newest
    in_flight.hold(records[3], ["n1"], expires=1e9)
    in_flight.hold(records[4], ["n1"], expires=1e9)
    assert [t.pod.name for t in in_flight.all()] == ["p0", "p3", "p4"]


def test_a_refreshed_observation_outlives_its_predecessor_s_deadline() -> None:
    """Staleness follows the newest observed-at: the superseded deadline does not count."""
    clock = Clock()
    cluster = make_cluster(clock, observed_stale_seconds=300)
    first = "2027-01-15T08:00:00Z"  # clock.wall = 1_800_000_000
    second = "2027-01-15T08:04:00Z"  # 240 s later
    cluster.nodes.upsert(
        node("n1", {"hostports.dev/observed": "2703", "hostports.dev/observed-at": first})
    )
    clock.wall += 240
    cluster.nodes.upsert(
        node("n1", {"hostports.dev/observed": "2703", "hostports.dev/observed-at": second})
    )
    clock.wall += 100  # past the first observation's deadline, within the second's
    cluster.sweep()
    assert not cluster.observation_is_stale("n1")
    assert "n1" in rejected(cluster, pod("agent", host_network=True, ports=[port(2703)]), ["n1"])
    clock.wall += 201  # past the second's deadline
    cluster.sweep()
    assert cluster.observation_is_stale("n1")
    assert rejected(cluster, pod("agent", host_network=True, ports=[port(2703)]), ["n1"]) == {}
