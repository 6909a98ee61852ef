"""`hostport-extender who NODE [PORT]`: every claim on a node, what kind it is, and whether it
counts now."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from extender.cli import main
from extender.core.pods import decode_pod
from extender.errors import PortSpecError
from extender.kube.snapshot import SnapshotObjects
from extender.settings import Settings
from extender.tools.source import build
from extender.tools.who import PortQuery, parse_port_query, who
from tests.conftest import REPO
from tests.objects import node, pod, port

SAMPLE = str(REPO / "config" / "samples" / "cluster.yaml")
AGENT_NODE = "ip-10-0-1-13.ec2.internal"


def who_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    assert main(["who", *argv, "--snapshot", SAMPLE, "-o", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_who_shows_the_agents_link_local_binds(capsys: pytest.CaptureFixture[str]) -> None:
    """On the agent's node, :80 is held on 169.254.170.23 and fd00:ec2::23 by the annotated
    listener, beside its declared ports, node-exporter and the reserved daemons."""
    report = who_json([AGENT_NODE], capsys)
    assert report["node"] == AGENT_NODE
    assert report["port"] is None
    rows = {(c["ports"], c["protocol"], c["address"], c["kind"]) for c in report["claims"]}
    assert ("80", "TCP", "169.254.170.23", "hostNetwork-annotated") in rows
    assert ("80", "TCP", "fd00:ec2::23", "hostNetwork-annotated") in rows
    assert ("2703", "TCP", "*", "hostNetwork") in rows
    assert ("10250", "TCP", "*", "node-reserved") in rows
    assert ("8125", "UDP", "*", "hostNetwork") in rows
    agent = [c for c in report["claims"] if c["ports"] == "80"]
    assert {c["pod"] for c in agent} == {"kube-system/eks-pod-identity-agent-q9d4s"}
    assert {c["state"] for c in report["claims"]} == {"active"}


@pytest.mark.parametrize(
    ("port_arg", "expected"),
    [
        ("80", {("80", "TCP", "169.254.170.23"), ("80", "TCP", "fd00:ec2::23")}),
        ("80/udp", set()),
        ("8125", {("8125", "UDP", "*")}),
        ("2700-2710/TCP", {("2703", "TCP", "*"), ("2705", "TCP", "*")}),
    ],
)
def test_who_one_port(
    port_arg: str, expected: set[tuple[str, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A port (range) narrows the answer; without a protocol every protocol matches."""
    report = who_json([AGENT_NODE, port_arg], capsys)
    assert {(c["ports"], c["protocol"], c["address"]) for c in report["claims"]} == expected


def test_who_table_on_the_sample(capsys: pytest.CaptureFixture[str]) -> None:
    """The table names the port, address, kind and holder, one claim per line, aligned."""
    assert main(["who", "ip-10-0-1-15.ec2.internal", "80", "--snapshot", SAMPLE]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ip-10-0-1-15.ec2.internal, port 80: 3 claims"
    assert lines[1].split() == ["PORT", "ADDRESS", "KIND", "HOLDER"]
    assert "hostPort pod ingress-nginx/ingress-nginx-controller-7d9c5-r8n4k" in lines[2]
    assert "169.254.170.23" in lines[3]
    assert "hostNetwork (annotated)" in lines[3]
    kind_at, holder_at = lines[1].index("KIND"), lines[1].index("HOLDER")
    for line in lines[2:]:
        assert line[kind_at - 2 : kind_at] == "  "
        assert line[kind_at] != " "
        assert line[holder_at:].startswith("host")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["who", "ip-10-0-1-99"], "node 'ip-10-0-1-99' unknown (5 nodes known)"),
        (
            ["who", "ip-10-0-1-13.ec2.interna"],
            "node 'ip-10-0-1-13.ec2.interna' unknown; did you mean ip-10-0-1-13.ec2.internal",
        ),
        (["who", AGENT_NODE, "http"], "port 'http': 'http' is not a port number"),
        (["who", AGENT_NODE, "80/QUIC"], "port '80/QUIC'"),
        (["who", AGENT_NODE, "90-80"], "port '90-80': range end 80 is below its start 90"),
    ],
)
def test_who_errors_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown node or a bad port is one line on stderr and exit code 2."""
    assert main([*argv, "--snapshot", SAMPLE]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"hostport-extender: error: {message}")
    assert captured.err.count("\n") == 1


def test_who_knows_nodes_only_pods_mention() -> None:
    """A node without a Node object but with a pod holding ports on it can still be asked."""
    loaded = build(Settings(), SnapshotObjects([], [pod("web", node="n9", ports=[port(80, 80)])]))
    (claim,) = who(loaded.cluster, "n9").claims
    assert (claim.spec, claim.pod) == ("80/TCP", "default/web")


def _stamp(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def test_observed_listeners_show_whether_they_count() -> None:
    """Observed listeners are active, explained by a pod holding the same port, or stale when
    the node agent stopped reporting; all three are shown so nothing is hidden."""
    fresh = node(
        "n1",
        {
            "hostports.dev/observed": "80/TCP, 9999/TCP",
            "hostports.dev/observed-at": _stamp(datetime.now(UTC)),
        },
    )
    old = node(
        "n2",
        {"hostports.dev/observed": "7000/TCP", "hostports.dev/observed-at": "2020-01-01T00:00:00Z"},
    )
    loaded = build(
        Settings(), SnapshotObjects([fresh, old], [pod("web", node="n1", ports=[port(80, 80)])])
    )
    states = {(c.spec, c.kind.value, c.state) for c in who(loaded.cluster, "n1").claims}
    assert states == {
        ("80/TCP", "hostPort", "active"),
        ("80/TCP", "observed", "explained"),
        ("9999/TCP", "observed", "active"),
    }
    (stale,) = who(loaded.cluster, "n2").claims
    assert (stale.spec, stale.state, stale.kind_text) == ("7000/TCP", "stale", "observed (stale)")


def test_in_flight_pods_are_shown_bound_and_tentative() -> None:
    """A pod that passed a node in filter shows as a tentative claim on every node it passed;
    once bound, as an active in-flight reservation on its node only."""
    loaded = build(Settings(), SnapshotObjects([node("n1"), node("n2")], []))
    cluster = loaded.cluster
    incoming = decode_pod(pod("ingress", ports=[port(80, 80)]))
    cluster.apply_pod(incoming)
    cluster.in_flight.hold(incoming, ["n1", "n2"], cluster.clock() + 60)
    for name in ("n1", "n2"):
        (claim,) = who(cluster, name).claims
        assert (claim.kind.value, claim.state, claim.pod) == (
            "in-flight",
            "tentative",
            "default/ingress",
        )
    cluster.record_binding(incoming.uid, "n2")
    assert who(cluster, "n1").claims == ()
    (bound,) = who(cluster, "n2").claims
    assert (bound.kind.value, bound.state, bound.pod) == ("in-flight", "active", "default/ingress")
    assert "being bound to this node" in bound.holder


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("80", PortQuery(80, 80)),
        ("80/udp", PortQuery(80, 80, "UDP")),
        (" 30000-30100/SCTP ", PortQuery(30000, 30100, "SCTP")),
    ],
)
def test_port_query_syntax(text: str, query: PortQuery) -> None:
    """PORT[-END][/PROTO], protocol in any case, optional."""
    assert parse_port_query(text) == query


@pytest.mark.parametrize("text", ["", "0", "65536", "80/", "a-b", "80-", "-80"])
def test_port_query_rejects(text: str) -> None:
    """Anything else is a PortSpecError quoting the text."""
    with pytest.raises(PortSpecError, match="port "):
        parse_port_query(text)
