"""`hostport-extender audit`: the conflicts and risks it finds, on the sample cluster and on
small clusters built for one rule each."""

from __future__ import annotations

import gc
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.cli import main
from extender.core.cluster import Cluster
from extender.core.ports import Claim, ClaimKind
from extender.kube.snapshot import SnapshotObjects
from extender.settings import Settings
from extender.tools.audit import EPHEMERAL_PORT, UDP_OWNER_SWITCH, AuditReport, audit
from extender.tools.source import build
from tests.conftest import REPO
from tests.objects import RawDict, node, pod, port

SAMPLE = str(REPO / "config" / "samples" / "cluster.yaml")


def audit_of(
    pods: list[RawDict], nodes: list[RawDict] | None = None, **settings: Any
) -> AuditReport:
    loaded = build(Settings(**settings), SnapshotObjects(nodes or [node("n1")], pods))
    return audit(loaded.cluster, finished_pods=loaded.finished)


def pairs(report: AuditReport) -> list[tuple[str, str, str, str]]:
    """(port, address, holder, holder) of each conflict, for compact assertions."""
    return [
        (c.spec, c.address or "*", c.claims[0].holder, c.claims[1].holder) for c in report.conflicts
    ]


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_sample_cluster_reports_the_port_80_incident(capsys: pytest.CaptureFixture[str]) -> None:
    """On the sample cluster the ingress hostPort 80 and the agent's undeclared :80 binds on
    ip-10-0-1-15 are the conflicts, once per address, and the exit code is 1."""
    code, report = run_json(["audit", "--snapshot", SAMPLE, "-o", "json"], capsys)
    assert code == 1
    assert report["clean"] is False
    assert report["nodes"] == 5
    found = {
        (c["node"], c["ports"], c["address"], c["claims"][0]["pod"], c["claims"][1]["pod"])
        for c in report["conflicts"]
    }
    incident = ("ip-10-0-1-15.ec2.internal", "80")
    ingress = "ingress-nginx/ingress-nginx-controller-7d9c5-r8n4k"
    agent = "kube-system/eks-pod-identity-agent-h5k8m"
    assert found == {
        (*incident, "169.254.170.23", ingress, agent),
        (*incident, "fd00:ec2::23", ingress, agent),
    }
    kinds = {c["claims"][1]["kind"] for c in report["conflicts"]}
    assert kinds == {"hostNetwork-annotated"}


def test_sample_cluster_reports_both_risks(capsys: pytest.CaptureFixture[str]) -> None:
    """The OTLP listener on 55680 is in the ephemeral range; statsd's 8125/UDP moved from an
    evicted hostPort pod to a hostNetwork one on ip-10-0-1-13."""
    _, report = run_json(["audit", "--snapshot", SAMPLE, "-o", "json"], capsys)
    risks = {(r["node"], r["risk"], r["ports"], r["protocol"], r["pod"]) for r in report["risks"]}
    assert risks == {
        (
            "ip-10-0-1-14.ec2.internal",
            EPHEMERAL_PORT,
            "55680",
            "TCP",
            "observability/otel-agent-l2v6d",
        ),
        (
            "ip-10-0-1-13.ec2.internal",
            UDP_OWNER_SWITCH,
            "8125",
            "UDP",
            "datadog/datadog-agent-zp5rt",
        ),
    }
    switch = next(r for r in report["risks"] if r["risk"] == UDP_OWNER_SWITCH)
    assert "datadog/datadog-agent-5xw9c" in switch["detail"]


def test_a_narrower_ephemeral_range_drops_the_risk(capsys: pytest.CaptureFixture[str]) -> None:
    """`--ephemeral-range` moves the window: 55680 outside 32768-50000 is no risk."""
    _, report = run_json(
        ["audit", "--snapshot", SAMPLE, "-o", "json", "--ephemeral-range", "32768-50000"], capsys
    )
    assert report["ephemeral_range"] == "32768-50000"
    assert EPHEMERAL_PORT not in {r["risk"] for r in report["risks"]}


def test_a_clean_cluster_exits_zero(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    """No conflicts: exit code 0 and the table says so, for cron and CI."""
    dump = tmp_path / "clean.json"
    dump.write_text(
        json.dumps(
            {"kind": "List", "items": [node("n1"), pod("web", node="n1", ports=[port(80, 80)])]}
        )
    )
    assert main(["audit", "--snapshot", str(dump)]) == 0
    assert "1 nodes, no conflicts, no risks" in capsys.readouterr().out


LISTEN = "hostports.dev/listen"
RESERVED = "hostports.dev/reserved"


@pytest.mark.parametrize(
    ("pods", "node_annotations", "settings", "expected"),
    [
        pytest.param(
            [
                pod("ingress", node="n1", ports=[port(80, 80)]),
                pod(
                    "agent",
                    node="n1",
                    host_network=True,
                    annotations={LISTEN: "80/TCP@169.254.170.23"},
                ),
            ],
            None,
            {},
            [
                (
                    "80/TCP",
                    "169.254.170.23",
                    "hostPort pod default/ingress",
                    f"hostNetwork pod default/agent (undeclared listener, {LISTEN})",
                )
            ],
            id="undeclared-listener-vs-hostPort",
        ),
        pytest.param(
            [pod("exporter", node="n1", host_network=True, ports=[port(10250)])],
            {RESERVED: "10250"},
            {},
            [
                (
                    "10250/TCP",
                    "*",
                    "a host daemon on the node (hostports.dev/reserved)",
                    "hostNetwork pod default/exporter",
                )
            ],
            id="node-reserved",
        ),
        pytest.param(
            [pod("exporter", node="n1", host_network=True, ports=[port(9100)])],
            None,
            {"cluster_reserved_ports": "9100"},
            [
                (
                    "9100/TCP",
                    "*",
                    "a host daemon on every node (cluster-wide reserved ports)",
                    "hostNetwork pod default/exporter",
                )
            ],
            id="cluster-reserved",
        ),
        pytest.param(
            [
                pod("v4", node="n1", ports=[port(53, 53, "UDP", "10.0.0.1")]),
                pod("dual", node="n1", host_network=True, ports=[port(53, None, "UDP", "::")]),
            ],
            None,
            {},
            [("53/UDP", "10.0.0.1", "hostNetwork pod default/dual", "hostPort pod default/v4")],
            id="dual-stack-wildcard",
        ),
        pytest.param(
            [
                pod("mesh", node="n1", ports=[port(8080)], sidecar_ports=[port(15001, 15001)]),
                pod("proxy", node="n1", ports=[port(15001, 15001)]),
            ],
            None,
            {},
            [("15001/TCP", "*", "hostPort pod default/mesh", "hostPort pod default/proxy")],
            id="native-sidecar",
        ),
        pytest.param(
            [pod("exporter", node="n1", host_network=True, ports=[port(10250)])],
            {RESERVED: "10250"},
            {"cluster_reserved_ports": "10250"},
            [
                (
                    "10250/TCP",
                    "*",
                    "a host daemon on every node (cluster-wide reserved ports)",
                    "hostNetwork pod default/exporter",
                ),
                (
                    "10250/TCP",
                    "*",
                    "a host daemon on the node (hostports.dev/reserved)",
                    "hostNetwork pod default/exporter",
                ),
            ],
            id="one-daemon-reserved-twice-is-not-a-conflict-with-itself",
        ),
        pytest.param(
            [
                pod("a", node="n1", ports=[port(80, 80, host_ip="10.0.0.1")]),
                pod("b", node="n1", ports=[port(80, 80, host_ip="10.0.0.2")]),
                pod("c", node="n1", ports=[port(80, 80, "UDP")]),
                pod("d", node="n1", host_network=True, ports=[port(80), port(80, None, "UDP")]),
                pod("e", node="n2", ports=[port(443, 443)]),
                pod("f", node="n3", ports=[port(443, 443)]),
            ],
            None,
            {},
            [
                ("80/TCP", "10.0.0.1", "hostNetwork pod default/d", "hostPort pod default/a"),
                ("80/TCP", "10.0.0.2", "hostNetwork pod default/d", "hostPort pod default/b"),
                ("80/UDP", "*", "hostNetwork pod default/d", "hostPort pod default/c"),
            ],
            id="addresses-protocols-and-nodes-separate-claims",
        ),
        pytest.param(
            [
                pod("finished", node="n1", ports=[port(80, 80)], phase="Succeeded"),
                pod("web", node="n1", ports=[port(80, 80)]),
            ],
            None,
            {},
            [],
            id="finished-pods-hold-nothing",
        ),
    ],
)
def test_conflict_rule_cases(
    pods: list[RawDict],
    node_annotations: dict[str, str] | None,
    settings: dict[str, Any],
    expected: list[tuple[str, str, str, str]],
) -> None:
    """Each source of claims is audited under the one conflict rule; daemons never conflict
    with themselves, and a pod's own claims never conflict with each other."""
    nodes = [node("n1", node_annotations), node("n2"), node("n3")]
    assert pairs(audit_of(pods, nodes, **settings)) == expected


def test_the_same_pod_twice_is_not_a_conflict() -> None:
    """A pod declaring a port and also annotating it is one owner, not a conflict."""
    agent = pod("agent", node="n1", host_network=True, ports=[port(80)], annotations={LISTEN: "80"})
    assert audit_of([agent]).conflicts == ()


def test_in_flight_reservations_are_not_conflicts() -> None:
    """A bound pod's reservation waiting for the watch is left out, not reported against it."""
    loaded = build(
        Settings(), SnapshotObjects([node("n1")], [pod("web", node="n1", ports=[port(80, 80)])])
    )
    incoming = pod("next", node="n1", ports=[port(80, 80)])
    loaded.cluster.pods.upsert({**incoming, "spec": {**incoming["spec"], "nodeName": ""}})
    loaded.cluster.record_binding("uid-next", "n1")
    assert any(c.kind.value == "in-flight" for c in loaded.cluster.index.claims_on("n1"))
    assert audit(loaded.cluster).conflicts == ()


def test_udp_switch_from_index_history() -> None:
    """A UDP port that moved from a hostPort pod to a host-network pod in the running index is a
    risk, with the age of the switch; the window comes from the settings."""
    now = [1000.0]
    cluster = Cluster(Settings(), clock=lambda: now[0])
    cluster.nodes.replace([node("n1")])
    cluster.pods.upsert(pod("statsd-old", node="n1", ports=[port(8125, 8125, "UDP")]))
    cluster.pods.delete(pod("statsd-old", node="n1"))
    now[0] += 30
    cluster.pods.upsert(
        pod("statsd", node="n1", host_network=True, ports=[port(8125, None, "UDP")])
    )
    now[0] += 12
    (risk,) = audit(cluster).risks
    assert (risk.node, risk.risk, risk.claim.pod) == ("n1", UDP_OWNER_SWITCH, "default/statsd")
    assert "12s ago" in risk.detail
    now[0] += 600
    assert audit(cluster).risks == ()


def test_hostport_claims_in_the_ephemeral_range_are_no_risk() -> None:
    """Only host-network listeners bind sockets; a hostPort in the range is a DNAT rule."""
    report = audit_of(
        [
            pod("dnat", node="n1", ports=[port(40000, 40000)]),
            pod("socket", node="n1", host_network=True, annotations={LISTEN: "40001"}),
        ]
    )
    assert [(r.risk, r.claim.pod) for r in report.risks] == [(EPHEMERAL_PORT, "default/socket")]


@pytest.mark.parametrize("text", ["60999-32768", "abc", "0-10", "1-2-3"])
def test_bad_ephemeral_range_is_one_line(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed --ephemeral-range is a clear error, exit 2, no traceback."""
    assert main(["audit", "--snapshot", SAMPLE, "--ephemeral-range", text]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hostport-extender: error: ephemeral range")
    assert err.count("\n") == 1


def test_snapshot_and_live_options_do_not_mix(capsys: pytest.CaptureFixture[str]) -> None:
    """--kubeconfig with --snapshot is a mistake worth one clear line, not a silent choice."""
    assert main(["audit", "--snapshot", SAMPLE, "--kubeconfig", "/dev/null"]) == 2
    assert capsys.readouterr().err == (
        "hostport-extender: error: --kubeconfig and --context are for live mode: drop --snapshot\n"
    )


def test_the_gc_is_back_on_after_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    """The tools pause the cyclic GC while they run; an in-process caller gets it back, even
    when the command fails."""
    assert gc.isenabled()
    main(["audit", "--snapshot", SAMPLE])
    assert gc.isenabled()
    assert main(["who", "nowhere", "--snapshot", SAMPLE]) == 2
    assert gc.isenabled()
    capsys.readouterr()


CLAIMS = st.lists(
    st.tuples(
        st.sampled_from(["pod-a", "pod-b", "pod-c", "node:n1:reserved", "cluster:reserved"]),
        st.sampled_from(["TCP", "UDP"]),
        st.integers(1, 40),
        st.integers(0, 80),
        st.sampled_from(["", "10.0.0.1", "10.0.0.2", "fd00::1"]),
    ),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(CLAIMS)
def test_audit_finds_exactly_the_colliding_pairs(
    raw_claims: list[tuple[str, str, int, int, str]],
) -> None:
    """The sweep over sorted claims reports exactly the pairs a brute-force check of every pair
    finds: different owners, colliding, at least one a pod's."""
    cluster = Cluster(Settings())
    cluster.nodes.replace([node("n1")])
    by_owner: dict[str, list[Claim]] = {}
    reserved: list[Claim] = []
    for owner, protocol, first, width, ip in raw_claims:
        if owner == "cluster:reserved":
            kind = ClaimKind.CLUSTER_RESERVED
        elif owner.startswith("node:"):
            kind = ClaimKind.NODE_RESERVED
        else:
            kind = ClaimKind.HOST_PORT
        claim = Claim(protocol, first, first + width, ip, kind, owner, f"holder {owner}")
        (reserved if kind is ClaimKind.CLUSTER_RESERVED else by_owner.setdefault(owner, [])).append(
            claim
        )
    cluster.index.cluster_reserved = tuple(reserved)
    for owner, claims in by_owner.items():
        cluster.index.set_owner(owner, "n1", claims)
    everything = cluster.index.claims_on("n1")
    expected = {
        frozenset(
            {
                (a.owner, a.protocol, a.first, a.last, a.ip),
                (b.owner, b.protocol, b.first, b.last, b.ip),
            }
        )
        for i, a in enumerate(everything)
        for b in everything[i + 1 :]
        if a.owner != b.owner and a.collides(b) and ClaimKind.HOST_PORT in (a.kind, b.kind)
    }
    found = [
        frozenset(
            (
                c.claims[k].holder.removeprefix("holder "),
                c.claims[k].protocol,
                c.claims[k].first,
                c.claims[k].last,
                c.claims[k].address,
            )
            for k in (0, 1)
        )
        for c in audit(cluster).conflicts
    ]
    assert len(found) == len(set(found))
    assert set(found) == expected


def test_a_port_declared_and_annotated_collides_once() -> None:
    """A hostNetwork pod that declares :80 and also annotates it meets the ingress once."""
    agent = pod("agent", node="n1", host_network=True, ports=[port(80)], annotations={LISTEN: "80"})
    ingress = pod("ingress", node="n1", ports=[port(80, 80)])
    assert pairs(audit_of([agent, ingress])) == [
        ("80/TCP", "*", "hostNetwork pod default/agent", "hostPort pod default/ingress")
    ]


ROUTED_SAMPLE = str(REPO / "config" / "samples" / "eks-routed-cluster.yaml")


def test_routed_sample_lists_protected_holders_and_the_unrouted_pod(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The walkthrough cluster: both protected ingress pods, and only the node-exporter pod the
    default scheduler placed (bootstrap DaemonSets and the extender's own pods are expected)."""
    code, report = run_json(["audit", "--snapshot", ROUTED_SAMPLE, "-o", "json"], capsys)
    assert code == 0, "facts, not conflicts: the exit code stays 0"
    assert report["protected"] == [
        {
            "node": f"ip-10-0-2-1{i}.ec2.internal",
            "pod": f"ingress-nginx/ingress-nginx-controller-5f8b9-{suffix}",
            "ports": "80/TCP,443/TCP",
            "why": "hostports.dev/protected",
        }
        for i, suffix in ((1, "k2x7p"), (2, "q8m4d"))
    ]
    assert report["unrouted"] == [
        {
            "node": "ip-10-0-2-13.ec2.internal",
            "pod": "monitoring/node-exporter-t6v2h",
            "ports": "9100/TCP",
            "created": "2026-12-01T08:12:40Z",
            "why": "scheduler-lease-stale (noted by the webhook)",
        }
    ]


def test_protected_ports_setting_protects_holders() -> None:
    """With protected_ports, a pod holding one is listed, naming the port; others are not."""
    pods = [
        pod("web", node="n1", ports=[port(80, 80)]),
        pod("dns", node="n1", ports=[port(53, 53, "UDP")]),
        pod("queued", ports=[port(443, 443)]),
    ]
    report = audit_of(pods, protected_ports="80/TCP,443/TCP")
    assert [(h.pod, h.ports, h.why) for h in report.protected] == [
        ("default/web", "80/TCP", "protected port 80/TCP")
    ]


ROUTED_NEIGHBOUR = pod(
    "routed", node="n1", ports=[port(81, 81)], scheduler_name="hostport-aware-scheduler"
)


def with_labels(raw: RawDict, **labels: str) -> RawDict:
    raw["metadata"]["labels"] = labels
    return raw


UNROUTED_CASES: list[tuple[str, RawDict, bool]] = [
    ("hostPort pod of the default scheduler", pod("a", node="n1", ports=[port(80, 80)]), True),
    ("hostNetwork pod of the default scheduler", pod("a", node="n1", host_network=True), True),
    ("still Pending", pod("a", ports=[port(80, 80)], phase="Pending"), False),
    ("finished", pod("a", node="n1", ports=[port(80, 80)], phase="Failed"), False),
    ("no host ports", pod("a", node="n1", ports=[port(8080)]), False),
    (
        "another scheduler",
        pod("a", node="n1", ports=[port(80, 80)], scheduler_name="volcano"),
        False,
    ),
    (
        "a mirror (static) pod",
        pod(
            "a",
            node="n1",
            host_network=True,
            annotations={"kubernetes.io/config.mirror": "0123abcd"},
        ),
        False,
    ),
    (
        "a bootstrap pod (label)",
        with_labels(pod("a", node="n1", host_network=True), **{"k8s-app": "kube-proxy"}),
        False,
    ),
    (
        "the extender's namespace",
        pod("a", namespace="hostport-system", node="n1", host_network=True),
        False,
    ),
]


@pytest.mark.parametrize(
    ("raw", "listed"), [c[1:] for c in UNROUTED_CASES], ids=[c[0] for c in UNROUTED_CASES]
)
def test_unrouted_pods(raw: RawDict, listed: bool) -> None:
    """Only placed host-port pods the webhook would route now are listed as unrouted."""
    loaded = build(Settings(), SnapshotObjects([node("n1")], [raw, ROUTED_NEIGHBOUR]))
    report = audit(loaded.cluster, raw_pods=[raw, ROUTED_NEIGHBOUR])
    assert [u.pod for u in report.unrouted] == ([f"{raw['metadata']['namespace']}/a"] * listed)


def test_unrouted_without_a_note_says_what_it_may_mean() -> None:
    """A pod the webhook never saw (unreachable, or created before the install) has no note."""
    raw = pod("a", node="n1", ports=[port(80, 80)])
    loaded = build(Settings(), SnapshotObjects([node("n1")], [raw, ROUTED_NEIGHBOUR]))
    (unrouted,) = audit(loaded.cluster, raw_pods=[raw, ROUTED_NEIGHBOUR]).unrouted
    assert unrouted.why == (
        "no webhook note: created while the webhook was unreachable, or before the install"
    )


def test_unrouted_is_empty_without_routing_in_use() -> None:
    """When no pod names the hostport-aware scheduler (kubeadm), nothing is called unrouted."""
    raw = pod("a", node="n1", ports=[port(80, 80)])
    loaded = build(Settings(), SnapshotObjects([node("n1")], [raw]))
    assert audit(loaded.cluster, raw_pods=[raw]).unrouted == ()
