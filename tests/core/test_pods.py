"""Raw pod and node JSON -> port claims, mirroring the API's defaulting and the scheduler."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extender.core.pods import (
    LastPodDecoder,
    ListenAnnotationError,
    PodShapeError,
    decode_node,
    decode_pod,
    may_hold_ports,
)
from extender.core.ports import ClaimKind
from extender.errors import WireError
from tests.objects import node, pod, port


def summary(raw: dict[str, Any]) -> list[tuple[str, int, int, str, str]]:
    record = decode_pod(raw)
    return [(c.protocol, c.first, c.last, c.ip, c.kind.value) for c in record.claims]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (pod("plain", ports=[port(8080)]), []),
        (pod("hp", ports=[port(8080, 18080)]), [("TCP", 18080, 18080, "", "hostPort")]),
        (pod("udp", ports=[port(8125, 8125, "UDP")]), [("UDP", 8125, 8125, "", "hostPort")]),
        (
            pod("ip", ports=[port(80, 80, "TCP", "10.0.0.1")]),
            [("TCP", 80, 80, "10.0.0.1", "hostPort")],
        ),
        (pod("zero", ports=[port(80, 80, host_ip="0.0.0.0")]), [("TCP", 80, 80, "", "hostPort")]),
        (pod("v6any", ports=[port(80, 80, host_ip="::")]), [("TCP", 80, 80, "", "hostPort")]),
        # hostNetwork: containerPort becomes the host port, as the API's defaulting does.
        (
            pod("hn", host_network=True, ports=[port(9100)]),
            [("TCP", 9100, 9100, "", "hostNetwork")],
        ),
        (
            pod("hn-explicit", host_network=True, ports=[port(9091, 9091)]),
            [("TCP", 9091, 9091, "", "hostNetwork")],
        ),
        (pod("hn-none", host_network=True), []),
        # Native sidecars hold their ports like containers.
        (
            pod("sidecar", sidecar_ports=[port(15001, 15001)]),
            [("TCP", 15001, 15001, "", "hostPort")],
        ),
        # Undeclared listeners of a hostNetwork pod.
        (
            pod(
                "listen",
                host_network=True,
                annotations={"hostports.dev/listen": "80/TCP@169.254.170.23, 80/TCP@fd00:ec2::23"},
            ),
            [
                ("TCP", 80, 80, "169.254.170.23", "hostNetwork-annotated"),
                ("TCP", 80, 80, "fd00:ec2::23", "hostNetwork-annotated"),
            ],
        ),
        # Without hostNetwork the listen annotation claims nothing.
        (pod("listen-no-hn", annotations={"hostports.dev/listen": "80"}), []),
        # Terminal pods hold nothing; terminating ones still hold their ports.
        (pod("done", ports=[port(80, 80)], phase="Succeeded"), []),
        (pod("failed", ports=[port(80, 80)], phase="Failed"), []),
        (pod("leaving", ports=[port(80, 80)], deleting=True), [("TCP", 80, 80, "", "hostPort")]),
    ],
)
def test_claims_of_a_pod(
    raw: dict[str, Any], expected: list[tuple[str, int, int, str, str]]
) -> None:
    """Which host-level ports a pod holds."""
    assert summary(raw) == expected


@pytest.mark.parametrize(
    ("raw", "claims", "init_claims"),
    [
        # Without hostNetwork the kubelet maps no host port for a plain init container.
        (pod("init", init_ports=[port(7000, 7000)]), [], []),
        # With hostNetwork its socket is real while it runs: needed at start, not held after.
        (pod("init-hn", host_network=True, init_ports=[port(7000)]), [], [(7000, "hostNetwork")]),
        # Native sidecars hold their ports like containers, with or without hostNetwork.
        (pod("sidecar", sidecar_ports=[port(7000, 7000)]), [(7000, "hostPort")], []),
        (
            pod("sidecar-hn", host_network=True, sidecar_ports=[port(7000)]),
            [(7000, "hostNetwork")],
            [],
        ),
    ],
)
def test_init_container_ports(
    raw: dict[str, Any], claims: list[tuple[int, str]], init_claims: list[tuple[int, str]]
) -> None:
    """Which init-container ports are held, which are only needed at start, which count not."""
    record = decode_pod(raw)
    assert [(c.first, c.kind.value) for c in record.claims] == claims
    assert [(c.first, c.kind.value) for c in record.init_claims] == init_claims
    assert [c.first for c in record.wanted] == [first for first, _ in claims + init_claims]


def test_listen_annotation_on_non_host_network_pod_is_reported() -> None:
    """The ignored annotation is reported once as a problem, so it can be logged."""
    record = decode_pod(pod("x", annotations={"hostports.dev/listen": "80"}))
    assert record.problems
    assert "does not use hostNetwork" in record.problems[0]


def test_invalid_listen_annotation_strict_and_lenient() -> None:
    """Strict (the pod being scheduled) raises quoting the entry; lenient keeps the good entries."""
    raw = pod("bad", host_network=True, annotations={"hostports.dev/listen": "80, 99999/TCP"})
    with pytest.raises(ListenAnnotationError, match="'99999/TCP'"):
        decode_pod(raw, strict=True)
    record = decode_pod(raw)
    assert [c.first for c in record.claims] == [80]
    assert "99999" in record.problems[0]


def test_the_last_pod_decoder_answers_an_equal_pod_from_memory_and_any_other_anew() -> None:
    """The same pod again (prioritize after filter: a new decoded dict, equal) gives the same
    record; a change anywhere, even with the same UID, is decoded; a failure is not kept."""
    decoder = LastPodDecoder()
    raw = pod("web", uid="u1", ports=[port(80, 80)])
    first = decoder.decode(raw)
    assert first == decode_pod(raw, strict=True)
    assert decoder.decode(copy.deepcopy(raw)) is first
    moved = copy.deepcopy(raw)
    moved["spec"]["containers"][0]["ports"] = [port(81, 81)]
    assert [claim.first for claim in decoder.decode(moved).claims] == [81]
    bad = pod("bad", host_network=True, annotations={"hostports.dev/listen": "99999"})
    for _ in range(2):
        with pytest.raises(ListenAnnotationError):
            decoder.decode(bad)
    assert decoder.decode(moved) is decoder.decode(copy.deepcopy(moved))
    with pytest.raises(PodShapeError):
        decoder.decode({"metadata": "not an object"})


def test_the_last_pod_decoder_tells_values_apart_that_python_finds_equal() -> None:
    """80.0 == 80 and 1 == True in Python, not to the decoder: such a pod is decoded anew."""
    decoder = LastPodDecoder()
    raw = pod("web", ports=[port(80, 80)], host_network=True)
    decoder.decode(raw)
    as_float = copy.deepcopy(raw)
    as_float["spec"]["containers"][0]["ports"][0]["hostPort"] = 80.0
    with pytest.raises(PodShapeError):
        decoder.decode(as_float)
    as_one = copy.deepcopy(raw)
    as_one["spec"]["hostNetwork"] = 1
    assert as_one == raw
    assert decoder.decode(as_one) == decode_pod(as_one, strict=True) != decode_pod(raw)


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda p: p["spec"].__setitem__("containers", "nope"), "containers must be a list"),
        (
            lambda p: p["spec"]["containers"][0].__setitem__(
                "ports", [{"containerPort": 80, "hostPort": "80"}]
            ),
            "hostPort must be an integer",
        ),
        (
            lambda p: p["spec"]["containers"][0].__setitem__(
                "ports", [{"containerPort": 80, "hostPort": 80, "protocol": "HTTP"}]
            ),
            "unknown protocol",
        ),
        (lambda p: p.__setitem__("metadata", []), "metadata must be an object"),
        (
            lambda p: p["spec"]["containers"][0].__setitem__(
                "ports", [{"containerPort": 1, "hostPort": 70000}]
            ),
            "outside 1-65535",
        ),
    ],
)
def test_strict_decoding_reports_wrong_shapes(mutate: Any, fragment: str) -> None:
    """A malformed pod in a request is a clear error naming the field; lenient skips it."""
    raw = pod("p", ports=[port(80, 80)])
    mutate(raw)
    with pytest.raises(PodShapeError, match=fragment):
        decode_pod(raw, strict=True)
    decode_pod(raw)  # never raises for objects already in the cluster


def test_protected_annotation() -> None:
    """hostports.dev/protected: "true" marks a pod as never evicted for a port."""
    assert decode_pod(pod("p", annotations={"hostports.dev/protected": "true"})).protected
    assert not decode_pod(pod("p", annotations={"hostports.dev/protected": "no"})).protected


def test_node_reserved_and_observed_annotations() -> None:
    """Nodes carry reserved daemons' ports and the agent's observations with their timestamp."""
    record = decode_node(
        node(
            "n1",
            {
                "hostports.dev/reserved": "10250,22, oops",
                "hostports.dev/observed": "2703/TCP@127.0.0.1,8125/UDP",
                "hostports.dev/observed-at": "2026-11-24T20:00:00Z",
            },
        )
    )
    assert [(c.first, c.kind) for c in record.reserved] == [
        (10250, ClaimKind.NODE_RESERVED),
        (22, ClaimKind.NODE_RESERVED),
    ]
    assert [(c.first, c.ip, c.protocol) for c in record.observed] == [
        (2703, "127.0.0.1", "TCP"),
        (8125, "", "UDP"),
    ]
    assert record.observed_at == pytest.approx(1795550400.0)
    assert record.problems
    assert "'oops'" in record.problems[0]
    assert "observed listening on the host" in record.observed[0].reason


def test_node_without_name_is_an_error() -> None:
    """A Node without metadata.name cannot be indexed."""
    with pytest.raises(WireError):
        decode_node({"metadata": {}})


port_fields = st.fixed_dictionaries(
    {"containerPort": st.integers(1, 65535)},
    optional={
        "hostPort": st.one_of(st.integers(0, 70000), st.just("80"), st.none()),
        "protocol": st.sampled_from(["TCP", "udp", "HTTP", ""]),
        "hostIP": st.sampled_from(["", "10.0.0.1", "::", "bogus"]),
    },
)
containers = st.lists(
    st.fixed_dictionaries(
        {"name": st.just("c")},
        optional={
            "ports": st.one_of(st.lists(port_fields, max_size=3), st.none(), st.just("x")),
            "restartPolicy": st.just("Always"),
        },
    ),
    max_size=2,
)
raw_pods = st.builds(
    lambda hn, cs, ics, ann, phase: {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u", "annotations": ann},
        "spec": {"hostNetwork": hn, "containers": cs, "initContainers": ics},
        "status": {"phase": phase},
    },
    st.sampled_from([None, False, True, "yes"]),
    containers,
    st.one_of(containers, st.none()),
    st.one_of(
        st.none(),
        st.dictionaries(
            st.sampled_from(["hostports.dev/listen", "team", "hostports.dev/protected"]),
            st.sampled_from(["80", "true", "bad!"]),
            max_size=2,
        ),
    ),
    st.sampled_from(["Running", "Pending", "Succeeded"]),
)


@given(raw_pods)
def test_the_quick_check_never_skips_a_pod_with_claims(raw: dict[str, Any]) -> None:
    """may_hold_ports() is False only when decode_pod() finds no claim and no problem."""
    if not may_hold_ports(raw):
        record = decode_pod(raw)
        assert (record.claims, record.init_claims, record.problems) == ((), (), ())


def test_the_quick_check_skips_plain_pods() -> None:
    """Pods without hostNetwork, hostPorts or a listen annotation need no record at all."""
    assert not may_hold_ports(pod("web", ports=[port(8080)]))
    assert not may_hold_ports(pod("job", phase="Succeeded", annotations={"team": "a"}))
    assert may_hold_ports(pod("hp", ports=[port(80, 80)]))
    assert may_hold_ports(pod("hn", host_network=True))
    assert may_hold_ports(pod("init", init_ports=[port(7000, 7000)]))


any_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "metadata",
                    "spec",
                    "status",
                    "containers",
                    "initContainers",
                    "ports",
                    "hostPort",
                    "containerPort",
                    "hostNetwork",
                    "annotations",
                    "name",
                    "uid",
                    "phase",
                    "nodeName",
                    "protocol",
                    "hostIP",
                    "restartPolicy",
                    "hostports.dev/listen",
                    "hostports.dev/reserved",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=25,
)


@given(st.dictionaries(st.sampled_from(["metadata", "spec", "status"]), any_json, max_size=3))
def test_lenient_decoding_never_raises(raw: dict[str, Any]) -> None:
    """Objects from the API server decode leniently: any shape gives a record, never an error."""
    record = decode_pod(raw)
    assert all(1 <= c.first <= c.last <= 65535 for c in record.claims + record.init_claims)
    metadata = raw.get("metadata")
    raw_node = dict(raw, metadata={**(metadata if isinstance(metadata, dict) else {}), "name": "n"})
    decode_node(raw_node)
