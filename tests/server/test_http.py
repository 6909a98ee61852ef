"""The HTTP API on a real loopback server: verbs, casing, bad input, readiness, scoring,
preemption guards and the in-flight reservation interleavings."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from extender.errors import BindError
from extender.server.readiness import Readiness
from tests.conftest import ExtenderClient, MakeExtender
from tests.objects import filter_args, node, pod, port

NODES = [node("n1"), node("n2"), node("n3")]
NAMES = ["n1", "n2", "n3"]


async def post(client: ExtenderClient, verb: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    response = await client.post(
        f"/{verb}", data=data, headers={"Content-Type": "application/json"}
    )
    assert response.content_type == "application/json"
    return response.status, await response.json()


async def test_filter_rejects_conflicting_nodes_with_reasons(make_extender: MakeExtender) -> None:
    """A hostPort pod is kept off the node whose hostNetwork pod binds the same port."""
    client, _ = await make_extender(
        NODES,
        [
            pod(
                "agent",
                namespace="kube-system",
                node="n1",
                host_network=True,
                annotations={"hostports.dev/listen": "80/TCP@169.254.170.23"},
            ),
        ],
    )
    status, answer = await post(
        client, "filter", filter_args(pod("ingress", ports=[port(80, 80)]), NAMES)
    )
    assert status == 200
    assert answer == {
        "NodeNames": ["n2", "n3"],
        "FailedNodes": {},
        "FailedAndUnresolvableNodes": {
            "n1": "80/TCP on 169.254.170.23 held by hostNetwork pod kube-system/agent "
            "(undeclared listener, hostports.dev/listen)",
        },
        "Error": "",
    }


async def test_pod_without_host_ports_passes_everything(make_extender: MakeExtender) -> None:
    """The fast path: no claims, every candidate back, nothing reserved."""
    client, cluster = await make_extender(NODES, [pod("a", node="n1", ports=[port(80, 80)])])
    status, answer = await post(
        client, "filter", filter_args(pod("web", ports=[port(8080)]), NAMES)
    )
    assert (status, answer["NodeNames"], answer["FailedAndUnresolvableNodes"]) == (200, NAMES, {})
    assert len(cluster.in_flight) == 0


async def test_full_nodes_mode_answers_with_node_objects(make_extender: MakeExtender) -> None:
    """nodeCacheCapable: false sends Nodes; the answer keeps the surviving Node objects."""
    client, _ = await make_extender(NODES, [pod("a", node="n2", ports=[port(80, 80)])])
    body = {
        "Pod": pod("b", ports=[port(80, 80)]),
        "Nodes": {"metadata": {}, "items": NODES},
        "NodeNames": None,
    }
    _, answer = await post(client, "filter", body)
    assert [n["metadata"]["name"] for n in answer["Nodes"]["items"]] == ["n1", "n3"]
    assert answer["Nodes"]["items"][0] == NODES[0]
    assert "NodeNames" not in answer
    assert list(answer["FailedAndUnresolvableNodes"]) == ["n2"]


async def test_any_key_casing_is_accepted(make_extender: MakeExtender) -> None:
    """Go decodes case-insensitively, so we accept lowercase and camelCase top-level keys."""
    client, _ = await make_extender(NODES, [pod("a", node="n2", ports=[port(80, 80)])])
    body = {"pod": pod("b", ports=[port(80, 80)]), "nodeNames": NAMES}
    _, answer = await post(client, "filter", body)
    assert answer["NodeNames"] == ["n1", "n3"]
    _, answer = await post(
        client, "bind", {"podname": "b", "podNamespace": "default", "poduid": "uid-b", "NODE": "n1"}
    )
    assert answer == {"Error": ""}


async def test_empty_candidate_list_answers_an_empty_list(make_extender: MakeExtender) -> None:
    """NodeNames is never omitted: an omitted list would reject every node."""
    client, _ = await make_extender(NODES)
    _, answer = await post(client, "filter", filter_args(pod("b", ports=[port(80, 80)]), []))
    assert answer["NodeNames"] == []


async def test_invalid_listen_annotation_rejects_every_node(make_extender: MakeExtender) -> None:
    """A pod whose listen annotation cannot be parsed is unresolvable everywhere, and says why."""
    client, _ = await make_extender(NODES)
    bad = pod("bad", host_network=True, annotations={"hostports.dev/listen": "80/HTTP"})
    _, answer = await post(client, "filter", filter_args(bad, NAMES))
    assert answer["NodeNames"] == []
    assert set(answer["FailedAndUnresolvableNodes"]) == set(NAMES)
    assert "'80/HTTP'" in answer["FailedAndUnresolvableNodes"]["n1"]


async def test_other_schedulers_pods_pass_through(make_extender: MakeExtender) -> None:
    """With --scheduler-name, pods of other schedulers are not judged."""
    client, _ = await make_extender(
        NODES,
        [pod("a", node="n1", ports=[port(80, 80)])],
        scheduler_name="hostport-aware-scheduler",
    )
    _, answer = await post(client, "filter", filter_args(pod("b", ports=[port(80, 80)]), NAMES))
    assert answer["NodeNames"] == NAMES
    ours = pod("c", ports=[port(80, 80)], scheduler_name="hostport-aware-scheduler")
    _, answer = await post(client, "filter", filter_args(ours, NAMES))
    assert answer["NodeNames"] == ["n2", "n3"]


@pytest.mark.parametrize(
    ("verb", "body", "status", "fragment"),
    [
        ("filter", b"{not json", 400, "malformed JSON"),
        ("filter", b"", 400, "empty request body"),
        ("filter", b"[1, 2]", 400, "must be a JSON object"),
        ("filter", {"NodeNames": ["n1"]}, 400, "missing Pod"),
        ("filter", {"Pod": [], "NodeNames": ["n1"]}, 400, "Pod must be an object"),
        ("filter", {"Pod": {}, "NodeNames": "n1"}, 400, "NodeNames must be a list of strings"),
        ("filter", {"Pod": {}, "NodeNames": [1]}, 400, "NodeNames must be a list of strings"),
        ("filter", {"Pod": {}}, 400, "missing NodeNames and Nodes"),
        ("filter", {"Pod": {}, "Nodes": {"items": [{}]}}, 400, "metadata.name"),
        (
            "filter",
            {
                "Pod": {"spec": {"containers": [{"ports": [{"hostPort": "80"}]}]}},
                "NodeNames": ["n1"],
            },
            400,
            "hostPort must be an integer",
        ),
        ("prioritize", {"Pod": 3, "NodeNames": []}, 400, "Pod must be an object"),
        ("bind", {"PodName": "a", "PodNamespace": "d", "PodUID": "u"}, 400, "Node must be"),
        ("bind", {"PodName": 1, "PodNamespace": "d", "PodUID": "u", "Node": "n"}, 400, "PodName"),
        ("preempt", {"Pod": {}, "NodeNameToMetaVictims": []}, 400, "keyed by node name"),
        ("preempt", {"Pod": {}, "NodeNameToMetaVictims": {"n1": {"Pods": [{}]}}}, 400, "UID"),
        ("schedule", {}, 404, "unknown verb 'schedule'"),
    ],
)
async def test_bad_input_gets_a_clear_json_error_and_changes_nothing(
    make_extender: MakeExtender, verb: str, body: Any, status: int, fragment: str
) -> None:
    """Malformed requests get a 4xx JSON Error; the server keeps serving; the index is intact."""
    client, cluster = await make_extender(NODES, [pod("a", node="n1", ports=[port(80, 80)])])
    before = cluster.index.fingerprint()
    got_status, answer = await post(client, verb, body)
    assert got_status == status
    assert fragment in answer["Error"]
    assert "Traceback" not in answer["Error"]
    assert cluster.index.fingerprint() == before
    _, answer = await post(client, "filter", filter_args(pod("b", ports=[port(80, 80)]), NAMES))
    assert answer["NodeNames"] == ["n2", "n3"]


async def test_oversized_body_is_refused(make_extender: MakeExtender) -> None:
    """Bodies over the configured limit get 413 with a JSON error."""
    client, _ = await make_extender(NODES, max_body_bytes=4096)
    body = filter_args(pod("b", ports=[port(80, 80)]), [f"node-{i}" for i in range(2000)])
    status, answer = await post(client, "filter", body)
    assert status == 413
    assert "too large" in answer["Error"]
    assert "4096" in answer["Error"]


async def test_wrong_method_and_health_endpoints(make_extender: MakeExtender) -> None:
    """GET on a verb is 405 JSON; /healthz and /readyz answer plainly."""
    client, _ = await make_extender(NODES)
    response = await client.get("/filter")
    assert response.status == 405
    assert "not allowed" in (await response.json())["Error"]
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200


class NotReady:
    def check(self) -> str | None:
        return "pods informer not synced"


@pytest.mark.parametrize("fail_open", [False, True])
async def test_not_ready_fails_closed_unless_fail_open(
    make_extender: MakeExtender, fail_open: bool
) -> None:
    """Before the cache is trusted, filter answers an Error (the scheduler retries), or with
    --fail-open lets every node pass; /readyz says why."""
    readiness: Readiness = NotReady()
    client, _ = await make_extender(NODES, readiness=readiness, fail_open=fail_open)
    status, answer = await post(
        client, "filter", filter_args(pod("b", ports=[port(80, 80)]), NAMES)
    )
    assert status == 200
    if fail_open:
        assert answer["NodeNames"] == NAMES
        assert answer["Error"] == ""
    else:
        assert answer["Error"] == "hostport-extender not ready: pods informer not synced"
    response = await client.get("/readyz")
    assert response.status == 503
    assert "pods informer not synced" in await response.text()


async def test_prioritize_spreads_host_port_workloads(make_extender: MakeExtender) -> None:
    """More host-port pods on a node lowers its score; pods without claims get no scores."""
    client, cluster = await make_extender(
        NODES,
        [
            pod("a", node="n1", ports=[port(81, 81)]),
            pod("b", node="n1", ports=[port(82, 82)]),
            pod("c", node="n2", ports=[port(83, 83)]),
        ],
    )
    _, answer = await post(client, "prioritize", filter_args(pod("x", ports=[port(80, 80)]), NAMES))
    assert answer == [
        {"Host": "n1", "Score": 8},
        {"Host": "n2", "Score": 9},
        {"Host": "n3", "Score": 10},
    ]
    # Scores change as pods come and go (the answer's encoded entries are kept between calls).
    cluster.pods.upsert(pod("d", node="n3", ports=[port(84, 84)]))
    cluster.pods.delete(pod("a", node="n1", ports=[port(81, 81)]))
    _, answer = await post(client, "prioritize", filter_args(pod("x", ports=[port(80, 80)]), NAMES))
    assert answer == [
        {"Host": "n1", "Score": 9},
        {"Host": "n2", "Score": 9},
        {"Host": "n3", "Score": 9},
    ]
    # Repeated and unusual names come back one entry each, in the order sent.
    odd = ["n2", "n1", "n2", 'quote"and\\slash', "ünïcode"]
    _, answer = await post(client, "prioritize", filter_args(pod("x", ports=[port(80, 80)]), odd))
    assert answer == [
        {"Host": "n2", "Score": 9},
        {"Host": "n1", "Score": 9},
        {"Host": "n2", "Score": 9},
        {"Host": 'quote"and\\slash', "Score": 10},
        {"Host": "ünïcode", "Score": 10},
    ]
    # No opinion (0 everywhere) is an empty list: the scheduler adds 0 to every node either way.
    for names in (NAMES, odd):
        _, answer = await post(client, "prioritize", filter_args(pod("web"), names))
        assert answer == []


async def test_prioritize_penalises_a_recent_udp_owner_switch(make_extender: MakeExtender) -> None:
    """After a hostPort statsd pod leaves n1, a hostNetwork statsd pod scores 0 there."""
    client, cluster = await make_extender(
        NODES,
        [
            pod("dd-old", node="n1", ports=[port(8125, 8125, "UDP")]),
        ],
    )
    cluster.pods.delete(pod("dd-old", node="n1", ports=[port(8125, 8125, "UDP")]))
    new = pod("dd-new", host_network=True, ports=[port(8125, protocol="UDP")])
    _, answer = await post(client, "prioritize", filter_args(new, NAMES))
    assert answer == [
        {"Host": "n1", "Score": 0},
        {"Host": "n2", "Score": 10},
        {"Host": "n3", "Score": 10},
    ]


async def test_preemption_never_evicts_protected_pods_for_a_port(
    make_extender: MakeExtender,
) -> None:
    """Nodes where the port is held by a protected pod (annotation or protected port) drop out."""
    client, _ = await make_extender(
        NODES,
        [
            pod(
                "ingress",
                node="n1",
                ports=[port(80, 80)],
                annotations={"hostports.dev/protected": "true"},
            ),
            pod("dns", node="n2", ports=[port(80, 80)]),
            pod("web", node="n3", ports=[port(80, 80)]),
        ],
        protected_ports="53/UDP",
    )
    victims = {
        n: {"Pods": [{"UID": f"uid-{v}"}], "NumPDBViolations": 0}
        for n, v in (("n1", "ingress"), ("n2", "dns"), ("n3", "web"))
    }
    body = {
        "Pod": pod("agent", host_network=True, ports=[port(80)]),
        "NodeNameToVictims": None,
        "NodeNameToMetaVictims": victims,
    }
    _, answer = await post(client, "preempt", body)
    assert answer == {"NodeNameToMetaVictims": {k: v for k, v in victims.items() if k != "n1"}}


async def test_preemption_full_victims_answered_as_meta_victims(
    make_extender: MakeExtender,
) -> None:
    """nodeCacheCapable: false sends whole victim pods; the answer is always UIDs."""
    held = pod("web", node="n3", ports=[port(80, 80)])
    client, _ = await make_extender(NODES, [held])
    body = {
        "Pod": pod("agent", host_network=True, ports=[port(80)]),
        "NodeNameToMetaVictims": None,
        "NodeNameToVictims": {"n3": {"Pods": [held], "NumPDBViolations": 1}},
    }
    _, answer = await post(client, "preempt", body)
    assert answer == {
        "NodeNameToMetaVictims": {"n3": {"Pods": [{"UID": "uid-web"}], "NumPDBViolations": 1}}
    }


# --- reservations: the scheduler binds asynchronously ----------------------------------------


async def test_filter_bind_filter_keeps_b_off_a_s_node(make_extender: MakeExtender) -> None:
    """filter(A), bind(A -> n2), filter(B): B is kept off n2 before any watch event."""
    client, _ = await make_extender(NODES)
    _, first = await post(client, "filter", filter_args(pod("a", ports=[port(80, 80)]), NAMES))
    assert first["NodeNames"] == NAMES
    await post(
        client, "bind", {"PodName": "a", "PodNamespace": "default", "PodUID": "uid-a", "Node": "n2"}
    )
    _, second = await post(client, "filter", filter_args(pod("b", ports=[port(80, 80)]), NAMES))
    assert second["NodeNames"] == ["n1", "n3"]
    assert "hostPort pod default/a" in second["FailedAndUnresolvableNodes"]["n2"]


async def test_filter_b_waits_for_a_s_bind(make_extender: MakeExtender) -> None:
    """filter(A), filter(B) before bind(A): B waits; when A binds to n1, B gets n2 and n3."""
    client, _ = await make_extender(NODES, in_flight_wait_seconds=5)
    await post(client, "filter", filter_args(pod("a", ports=[port(80, 80)]), NAMES))
    b_call = asyncio.create_task(
        post(client, "filter", filter_args(pod("b", ports=[port(80, 80)]), NAMES))
    )
    await asyncio.sleep(0.05)
    assert not b_call.done(), "B must wait while A may take any of its nodes"
    await post(
        client, "bind", {"PodName": "a", "PodNamespace": "default", "PodUID": "uid-a", "Node": "n1"}
    )
    _, answer = await asyncio.wait_for(b_call, 5)
    assert answer["NodeNames"] == ["n2", "n3"]


async def test_filter_b_without_a_s_bind_is_conservative(make_extender: MakeExtender) -> None:
    """If A does not bind within the wait, B is kept off every node A may still take."""
    client, _ = await make_extender(NODES, in_flight_wait_seconds=0.05)
    await post(client, "filter", filter_args(pod("a", ports=[port(80, 80)]), ["n1", "n2"]))
    _, answer = await post(client, "filter", filter_args(pod("b", ports=[port(80, 80)]), NAMES))
    assert answer["NodeNames"] == ["n3"]
    assert "in flight" in answer["FailedAndUnresolvableNodes"]["n1"]
    # A pod on another port is not held up at all.
    _, other = await post(client, "filter", filter_args(pod("c", ports=[port(81, 81)]), NAMES))
    assert other["NodeNames"] == NAMES


class FailingBinder:
    async def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        raise BindError(f'pods "{name}" not found')


async def test_failed_bind_reports_the_error_and_drops_the_reservation(
    make_extender: MakeExtender,
) -> None:
    """A bind the API refuses is reported in Error, and A's tentative hold is released."""
    client, cluster = await make_extender(NODES, binder=FailingBinder(), in_flight_wait_seconds=0)
    await post(client, "filter", filter_args(pod("a", ports=[port(80, 80)]), NAMES))
    _, answer = await post(
        client, "bind", {"PodName": "a", "PodNamespace": "default", "PodUID": "uid-a", "Node": "n1"}
    )
    assert answer == {"Error": 'pods "a" not found'}
    assert len(cluster.in_flight) == 0
    _, answer = await post(client, "filter", filter_args(pod("b", ports=[port(80, 80)]), NAMES))
    assert answer["NodeNames"] == NAMES


async def test_expired_tentative_reservation_stops_blocking(make_extender: MakeExtender) -> None:
    """A filtered pod that never binds stops holding ports after its time to live."""
    client, cluster = await make_extender(
        NODES, in_flight_ttl_seconds=0.05, in_flight_wait_seconds=0
    )
    await post(client, "filter", filter_args(pod("a", ports=[port(80, 80)]), NAMES))
    await asyncio.sleep(0.1)
    _, answer = await post(client, "filter", filter_args(pod("b", ports=[port(80, 80)]), NAMES))
    assert answer["NodeNames"] == NAMES
    cluster.sweep()
    assert cluster.in_flight.get("uid-a") is None


async def test_both_node_names_and_nodes_are_answered_consistently(
    make_extender: MakeExtender,
) -> None:
    """A request with both lists (found by fuzzing; 500 before): NodeNames are judged and a Node
    object comes back only if its name passed."""
    client, _ = await make_extender(NODES, [pod("a", node="n2", ports=[port(80, 80)])])
    body = {
        "Pod": pod("b", ports=[port(80, 80)]),
        "NodeNames": ["n1", "n2"],
        "Nodes": {"metadata": {}, "items": NODES},
    }
    status, answer = await post(client, "filter", body)
    assert status == 200
    assert answer["NodeNames"] == ["n1"]
    assert [n["metadata"]["name"] for n in answer["Nodes"]["items"]] == ["n1"]
