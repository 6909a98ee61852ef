"""Tentative reservations: indexed by port, the colliding port and workload named, and the
index kept equal to a brute-force scan over any sequence of holds, takes and expiries."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.inflight import InFlight
from extender.core.pods import PodPorts, decode_pod
from extender.core.ports import RANGE_EXPANSION_LIMIT, Claim, ClaimKind
from extender.core.portspec import WILDCARD
from tests.objects import RawDict, pod, port


def in_flight_pod(uid: str, specs: list[tuple[str, int, int, str]], workload: str = "") -> PodPorts:
    claims = tuple(
        Claim(protocol, first, last, ip, ClaimKind.HOST_PORT, uid, f"hostPort pod ns/{uid}")
        for protocol, first, last, ip in specs
    )
    return PodPorts(uid, "ns", uid, "", False, "", claims, workload=workload)


def wants(*specs: tuple[str, int, int, str]) -> list[Claim]:
    return list(in_flight_pod("me", list(specs)).claims)


def deployment_pod(name: str, ports: list[RawDict]) -> RawDict:
    raw = pod(name, namespace="shop", ports=ports)
    raw["metadata"]["labels"] = {"pod-template-hash": "7d9c5"}
    raw["metadata"]["ownerReferences"] = [
        {"kind": "ReplicaSet", "name": "web-7d9c5", "controller": True}
    ]
    return raw


def test_the_reason_names_the_colliding_port_and_the_workload() -> None:
    """Pod A holds 80 and 443; B wants only 443: the reason says 443 and A's Deployment."""
    in_flight = InFlight()
    a = decode_pod(deployment_pod("web-7d9c5-a", [port(80, 80), port(443, 443)]), strict=True)
    in_flight.hold(a, ["n1", "n2"], expires=100)
    blocked = in_flight.blocking(wants(("TCP", 443, 443, WILDCARD)), "me", ["n2", "n3"], now=0)
    assert blocked == {
        "n2": "443/TCP on every address may be taken by a pod of Deployment shop/web, "
        "which is being scheduled (in flight); retry after it binds"
    }


def test_a_bare_in_flight_pod_is_named_itself() -> None:
    """Without a controller the in-flight pod is named by namespace/name."""
    in_flight = InFlight()
    in_flight.hold(in_flight_pod("a", [("UDP", 8125, 8125, "10.0.0.1")]), ["n1"], expires=100)
    assert in_flight.blocking(wants(("UDP", 8125, 8125, WILDCARD)), "me", ["n1"], 0) == {
        "n1": "8125/UDP on every address may be taken by pod ns/a, which is being scheduled "
        "(in flight); retry after it binds"
    }


@pytest.mark.parametrize(
    ("held", "wanted", "blocks"),
    [
        (("TCP", 80, 80, WILDCARD), ("TCP", 80, 80, WILDCARD), True),
        (("TCP", 80, 80, WILDCARD), ("UDP", 80, 80, WILDCARD), False),
        (("TCP", 80, 80, "10.0.0.1"), ("TCP", 80, 80, "10.0.0.2"), False),
        (("TCP", 80, 80, "10.0.0.1"), ("TCP", 80, 80, WILDCARD), True),
        (("TCP", 80, 80, WILDCARD), ("TCP", 80, 80, "10.0.0.2"), True),
        (("TCP", 30000, 32767, WILDCARD), ("TCP", 31000, 31000, WILDCARD), True),
        (("TCP", 31000, 31000, WILDCARD), ("TCP", 30000, 32767, WILDCARD), True),
        (("TCP", 30000, 30100, WILDCARD), ("TCP", 30101, 40000, WILDCARD), False),
    ],
)
def test_the_conflict_rule_through_the_index(
    held: tuple[str, int, int, str], wanted: tuple[str, int, int, str], blocks: bool
) -> None:
    """Points, narrow and wide ranges and addresses collide as in the port index."""
    in_flight = InFlight()
    in_flight.hold(in_flight_pod("a", [held]), ["n1"], expires=100)
    assert bool(in_flight.blocking(wants(wanted), "me", ["n1"], 0)) is blocks


def test_settled_refreshed_and_expired_reservations_leave_the_index() -> None:
    """take, expire, eviction of the oldest and a refresh with other ports all unindex."""
    in_flight = InFlight(max_entries=2)
    want_80 = wants(("TCP", 80, 80, WILDCARD))
    in_flight.hold(in_flight_pod("a", [("TCP", 80, 80, WILDCARD)]), ["n1"], expires=100)
    in_flight.take("a")
    assert in_flight.blocking(want_80, "me", ["n1"], 0) == {}
    in_flight.hold(in_flight_pod("b", [("TCP", 80, 80, WILDCARD)]), ["n1"], expires=5)
    assert in_flight.expire(now=10)[0].pod.uid == "b"
    assert in_flight.blocking(want_80, "me", ["n1"], 0) == {}
    in_flight.hold(in_flight_pod("c", [("TCP", 80, 80, WILDCARD)]), ["n1"], expires=100)
    in_flight.hold(in_flight_pod("c", [("TCP", 81, 81, WILDCARD)]), ["n1"], expires=100)
    assert in_flight.blocking(want_80, "me", ["n1"], 0) == {}
    in_flight.hold(in_flight_pod("d", [("TCP", 80, 80, WILDCARD)]), ["n1"], expires=100)
    in_flight.hold(in_flight_pod("e", [("TCP", 82, 82, WILDCARD)]), ["n1"], expires=100)
    assert [t.pod.uid for t in in_flight.all()] == ["d", "e"]  # c was the oldest
    assert in_flight.blocking(wants(("TCP", 81, 81, WILDCARD)), "me", ["n1"], 0) == {}


SPECS = st.builds(
    lambda protocol, first, span, ip: (protocol, first, first + span, ip),
    st.sampled_from(["TCP", "UDP"]),
    st.integers(1, 150),
    st.sampled_from([0, 0, 2, RANGE_EXPANSION_LIMIT + 5]),
    st.sampled_from([WILDCARD, "10.0.0.1", "10.0.0.2"]),
)
UIDS = ["a", "b", "c", "me"]
NODES = ["n1", "n2", "n3"]
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("hold"),
            st.sampled_from(UIDS),
            st.lists(SPECS, max_size=3),
            st.sets(st.sampled_from(NODES)),
            st.integers(0, 20),
        ),
        st.tuples(st.just("take"), st.sampled_from(UIDS)),
        st.tuples(st.just("expire"), st.integers(0, 20)),
    ),
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(OPERATIONS, st.lists(SPECS, min_size=1, max_size=3), st.sets(st.sampled_from(NODES)))
def test_blocking_matches_a_brute_force_scan(
    operations: list[tuple[object, ...]],
    wanted_specs: list[tuple[str, int, int, str]],
    candidates: set[str],
) -> None:
    """After any holds, takes and expiries, blocking() finds exactly the nodes a scan of every
    claim of every live reservation finds, each with a reason naming a colliding wanted port."""
    in_flight = InFlight(max_entries=3)
    for operation in operations:
        if operation[0] == "hold":
            _, uid, specs, nodes, expires = operation
            assert isinstance(uid, str)
            assert isinstance(specs, list)
            assert isinstance(nodes, set)
            assert isinstance(expires, int)
            in_flight.hold(in_flight_pod(uid, specs), sorted(nodes), expires)
        elif operation[0] == "take":
            assert isinstance(operation[1], str)
            in_flight.take(operation[1])
        else:
            assert isinstance(operation[1], int)
            in_flight.expire(operation[1])
    wanted = wants(*wanted_specs)
    now = 10
    expected: dict[str, set[str]] = {}
    for tentative in in_flight.all():
        if tentative.pod.uid == "me" or tentative.expires <= now:
            continue
        colliding = {w.spec for w in wanted for c in tentative.pod.wanted if w.collides(c)}
        if colliding:
            for node in tentative.nodes & candidates:
                expected.setdefault(node, set()).update(colliding)
    found = in_flight.blocking(wanted, "me", sorted(candidates), now)
    assert set(found) == set(expected)
    for node, reason in found.items():
        assert reason.split(" ", 1)[0] in expected[node]
