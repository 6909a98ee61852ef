"""The watch-line prefilter never skips an event that matters, and reads UID and RV exactly."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.cluster import Cluster
from extender.core.podline import portless_pod_event
from extender.core.pods import decode_pod
from extender.settings import Settings
from tests.objects import pod, port

RawDict = dict[str, Any]


def go_ordered(raw: RawDict, rv: str) -> RawDict:
    """`raw` with keys as the API server writes them: kind, apiVersion, metadata head first."""
    meta = dict(raw["metadata"])
    head = {k: meta.pop(k) for k in ("name", "namespace", "uid") if k in meta}
    metadata = head | {"resourceVersion": rv} | meta
    rest = {k: v for k, v in raw.items() if k not in ("metadata", "kind", "apiVersion")}
    return {"kind": "Pod", "apiVersion": "v1", "metadata": metadata} | rest


def line(kind: str, raw: RawDict) -> bytes:
    return orjson.dumps({"type": kind, "object": raw})


PLAIN = go_ordered(pod("web", node="n1", ports=[port(8080)]), "41")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (go_ordered(pod("a", node="n1", ports=[port(80, 80)]), "7"), "a hostPort"),
        (go_ordered(pod("a", node="n1", host_network=True), "7"), "hostNetwork"),
        (
            go_ordered(pod("a", annotations={"hostports.dev/listen": "8125/UDP"}), "7"),
            "the listen annotation",
        ),
        (
            go_ordered(pod("a", annotations={"hostports.dev/protected": "true"}), "7"),
            "any hostports.dev annotation",
        ),
        (go_ordered(pod("a", init_ports=[port(9, 9)]), "7"), "an init container's hostPort"),
        (pod("a"), "kubectl's key order: the RV comes after the labels and annotations"),
    ],
)
def test_lines_that_may_claim_ports_or_are_not_go_shaped_are_decoded(
    raw: RawDict, why: str
) -> None:
    """Any of the port words, or metadata not in the API server's order, means a full decode."""
    assert portless_pod_event(line("MODIFIED", raw)) is None, why


def test_a_portless_pod_is_read_without_decoding() -> None:
    """Type, UID and resourceVersion come from the line's metadata head, exactly."""
    for kind in ("ADDED", "MODIFIED", "DELETED"):
        event = portless_pod_event(line(kind, PLAIN))
        assert event is not None
        assert (event.type, event.uid, event.resource_version) == (kind, "uid-web", "41")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[: len(b) // 2],  # cut in the middle
        lambda b: b.replace(b'"uid":"uid-web"', b'"uid":"uid-web","uid":"other"'),
        lambda b: b.replace(b'"resourceVersion":"41"', b'"resourceVersion":"41","uid":"other"'),
        lambda b: b.replace(b'"41"', b'"41","resourceVersion":"4"'),
        lambda b: b.replace(b'"name":"web"', b'"name":"w\\"eb"'),
        lambda b: b.replace(b'"uid":"uid-web"', b'"uid":"uid-\\"web"'),
        lambda b: b.replace(b'"uid":"uid-web",', b""),
        lambda b: b.replace(b'"resourceVersion":"41"', b'"resourceVersion":41'),
        lambda b: b.replace(b'"type":"MODIFIED"', b'"type":"BOOKMARK"'),
        lambda b: b.replace(b'"uid":"uid-web"', b'"uid":"\xff"'),
    ],
)
def test_odd_lines_are_left_to_the_decoder(mangle: Any) -> None:
    """Cut lines, duplicate or escaped UIDs, numbers for strings: never guessed at."""
    assert portless_pod_event(mangle(line("MODIFIED", PLAIN))) is None


_SCALAR = st.one_of(
    st.text(alphabet='ab-"\\{}[],:\u00e9', max_size=6), st.integers(0, 99), st.none()
)
_MEMBER = st.one_of(
    st.tuples(st.sampled_from(["name", "uid", "resourceVersion", "namespace"]), _SCALAR),
    st.tuples(
        st.sampled_from(["labels", "ownerReferences", "uid"]),
        st.one_of(
            st.dictionaries(st.sampled_from(["uid", "resourceVersion", "a"]), _SCALAR),
            st.lists(st.fixed_dictionaries({"uid": _SCALAR}), max_size=2),
        ),
    ),
)


def _raw_object(members: list[tuple[str, Any]]) -> bytes:
    """A JSON object written member by member: duplicate keys and any order survive."""
    return b"{" + b",".join(orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in members) + b"}"


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]),
    typed=st.booleans(),
    metadata=st.lists(_MEMBER, max_size=6),
    after=st.lists(_MEMBER, max_size=2),
)
def test_whatever_the_head_reads_is_what_a_decoder_reads(
    kind: str, typed: bool, metadata: list[tuple[str, Any]], after: list[tuple[str, Any]]
) -> None:
    """Keys in any order, nested values before or after the UID, duplicates, escapes, numbers,
    members after metadata: when the raw head answers, a JSON decoder says the same."""
    head = b'{"kind":"Pod","apiVersion":"v1",' if typed else b"{"
    obj = head + b'"metadata":' + _raw_object(metadata)
    obj += b"".join(b"," + orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in after) + b"}"
    raw_line = b'{"type":"' + kind.encode() + b'","object":' + obj + b"}"
    event = portless_pod_event(raw_line)
    if event is None:
        return
    decoded = orjson.loads(raw_line)
    assert event.type == decoded["type"]
    assert event.uid == decoded["object"]["metadata"]["uid"]
    assert event.resource_version == decoded["object"]["metadata"]["resourceVersion"]


def test_a_metadata_head_without_the_uid_or_cut_short_is_not_read() -> None:
    """The UID after the first nested value, or after metadata's end, is not metadata's own."""
    nested = line(
        "MODIFIED", {"metadata": {"name": "a", "labels": {}, "uid": "u", "resourceVersion": "1"}}
    )
    assert portless_pod_event(nested) is None
    outside = b'{"type":"ADDED","object":{"metadata":{"name":"a"},"uid":"u","resourceVersion":"1"}}'
    assert portless_pod_event(outside) is None
    assert portless_pod_event(b'{"type":"ADDED","object":{"metadata":{"uid":"u"') is None


# --- the property: with or without the prefilter, the cluster ends up the same ----------------

SHAPES: list[RawDict] = [
    pod("p", node="n1"),
    pod("p", node="n1", ports=[port(8080)]),
    pod("p", node="n1", ports=[port(80, 80)]),
    pod("p", node="n1", ports=[port(80, 0)]),
    pod("p", node="n2", ports=[port(53, 53, "UDP", "10.0.0.2")]),
    pod("p", node="n1", host_network=True, ports=[port(2703)]),
    pod("p", node="n1", host_network=True),
    pod("p", node="n1", host_network=True, annotations={"hostports.dev/listen": "8125/UDP"}),
    pod("p", node="n1", annotations={"hostports.dev/listen": "8125/UDP"}),
    pod("p", node="n1", annotations={"example.com/note": "hostPort-free"}),
    pod("p", node="n1", sidecar_ports=[port(15000, 15000)]),
    pod("p", node="n1", ports=[port(80, 80)], phase="Succeeded"),
    pod("p", node="n1", ports=[port(80, 80)])
    | {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}},
    pod("p", node="n1", ports=[port(80, 80)], phase="Running"),
    pod("p", node="n1", ports=[port(80, 80)], phase="Pending"),
    pod("p", node="n1", ports=[port(80, 80)], phase="Failed"),
    pod("p", node="n1", ports=[port(80, 80)], annotations={"hostports.dev/protected": "true"}),
    pod("p", node="n1", ports=[port(80, 80)], annotations={"hostports.dev/listen": "22"}),
    pod("p", node="", ports=[port(80, 80)]),
]


def apply_decoded(cluster: Cluster, kind: str, raw: RawDict) -> None:
    if kind == "DELETED":
        cluster.pods.delete(raw)
    else:
        cluster.pods.upsert(raw)


def state(cluster: Cluster) -> tuple[Any, ...]:
    return (
        cluster.index.fingerprint(),
        sorted(cluster.pods_by_uid),
        sorted(t.pod.uid for t in cluster.in_flight.all()),
        cluster.bound_reservations(),
    )


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["ADDED", "MODIFIED", "DELETED"]),
            st.integers(0, len(SHAPES) - 1),
            st.booleans(),
        ),
        min_size=1,
        max_size=8,
    ),
    in_flight=st.booleans(),
    bound=st.booleans(),
)
def test_skipping_never_changes_what_the_cluster_holds(
    events: list[tuple[str, int, bool]], in_flight: bool, bound: bool
) -> None:
    """Every sequence of events on one pod leaves the same index, pods and reservations.

    One cluster decodes every line; the other asks the prefilter first and decodes only what
    it does not skip. A skipped line's resourceVersion is the one the decoder would have read.
    """
    always, filtered = Cluster(Settings()), Cluster(Settings())
    for cluster in (always, filtered):
        wanting = decode_pod(pod("p", ports=[port(80, 80)]))
        if in_flight:
            cluster.in_flight.hold(wanting, ["n1", "n2"], cluster.clock() + 60)
        if bound:
            cluster.record_binding(wanting.uid, "n2")
    for rv, (kind, shape, go_order) in enumerate(events, start=100):
        raw = SHAPES[shape]
        raw = (
            go_ordered(raw, str(rv))
            if go_order
            else raw | {"metadata": raw["metadata"] | {"resourceVersion": str(rv)}}
        )
        encoded = line(kind, raw)
        apply_decoded(always, kind, orjson.loads(encoded)["object"])
        skipped_at = filtered.pods.skippable(encoded)
        if skipped_at is None:
            apply_decoded(filtered, kind, orjson.loads(encoded)["object"])
        else:
            assert skipped_at == str(rv)
        assert state(filtered) == state(always)


def test_deleting_a_held_pod_that_lost_its_ports_is_still_applied() -> None:
    """A pod we hold is never skipped, even when its line no longer names any port."""
    cluster = Cluster(Settings())
    held = go_ordered(
        pod("p", node="n1", host_network=True, annotations={"hostports.dev/listen": "8125/UDP"}),
        "5",
    )
    cluster.pods.upsert(held)
    assert cluster.holds_pod("uid-p")
    cleared = go_ordered(pod("p", node="n1"), "6")
    assert cluster.pods.skippable(line("DELETED", cleared)) is None
    cluster.pods.delete(cleared)
    assert not cluster.holds_pod("uid-p")
    assert cluster.pods.skippable(line("DELETED", cleared)) == "6"


def test_a_status_update_of_a_held_pod_is_skipped_and_any_port_change_is_not() -> None:
    """After a held pod's line was applied, a line differing only in its status (conditions,
    a phase that stays not terminal, resourceVersion, managedFields) is skipped; one changing
    the spec, the port annotations or making the phase terminal is decoded, and so is anything
    after a DELETED or for a reserved pod."""
    cluster = Cluster(Settings())
    protected = {"hostports.dev/protected": "true"}
    base = pod("p", node="n1", ports=[port(80, 80)], annotations=protected)

    def event(rv: int, raw: RawDict, kind: str = "MODIFIED") -> str | None:
        encoded = line(kind, go_ordered(raw, str(rv)))
        skipped = cluster.pods.skippable(encoded)
        if skipped is None:
            apply_decoded(cluster, kind, orjson.loads(encoded)["object"])
        return skipped

    def status(tick: int) -> RawDict:
        return {"phase": "Running", "conditions": [{"type": "Ready", "lastProbeTime": str(tick)}]}

    pending = base | {"status": {"phase": "Pending"}}
    assert event(1, pending, "ADDED") is None
    assert event(2, pending) is None  # first MODIFIED: shape learnt
    record = cluster.pods_by_uid["uid-p"]
    assert event(3, base | {"status": status(3)}) == "3"  # Pending -> Running: nothing to read
    managed = dict(base, metadata=base["metadata"] | {"managedFields": [{"manager": "kubelet"}]})
    assert event(4, managed | {"status": status(4)}) == "4"
    assert cluster.pods_by_uid["uid-p"] is record
    moved = pod("p", node="n1", ports=[port(81, 81)], annotations=protected)
    assert event(5, moved | {"status": status(5)}) is None  # the spec changed
    assert {claim[3] for claim in cluster.index.fingerprint()} >= {81}
    relabelled = dict(moved, metadata=moved["metadata"] | {"annotations": {}})
    assert event(6, relabelled | {"status": status(6)}) is None  # the annotation went
    assert event(7, relabelled | {"status": status(7) | {"phase": "Succeeded"}}) is None
    assert "uid-p" not in cluster.pods_by_uid  # finished: released
    assert event(8, base | {"status": status(8)}) is None  # running again: held again
    assert event(9, base | {"status": status(9)}) == "9"
    cluster.in_flight.hold(cluster.pods_by_uid["uid-p"], ["n1"], cluster.clock() + 60)
    assert event(10, base | {"status": status(10)}) is None  # a reservation: always decoded


@pytest.mark.parametrize("typed_item", [True, False])
def test_after_a_list_the_first_status_update_is_skipped_too(typed_item: bool) -> None:
    """A listed pod's raw item gives the same shape as a watch line of the same object, so its
    first status update after a (re)list is skipped; a spec change is not."""
    cluster = Cluster(Settings())
    raw = go_ordered(pod("p", node="n1", ports=[port(80, 80)]), "5")
    if typed_item:  # the API server leaves kind and apiVersion out of list items
        raw = {key: value for key, value in raw.items() if key not in ("kind", "apiVersion")}
    item = orjson.dumps(raw)
    assert cluster.pods.listable(item)
    assert not cluster.pods.listable(orjson.dumps(go_ordered(pod("q", node="n1"), "5")))
    listed = cluster.pods.compact(orjson.loads(item))
    assert listed is not None
    list(cluster.pods.replace_in_steps([listed]))
    ready = go_ordered(pod("p", node="n1", ports=[port(80, 80)]), "6")
    ready["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    assert cluster.pods.skippable(line("MODIFIED", ready)) == "6"
    moved = go_ordered(pod("p", node="n2", ports=[port(80, 80)]), "7")
    assert cluster.pods.skippable(line("MODIFIED", moved)) is None
