"""The running extender's read-only views, on a real loopback server: `/debug/nodes/{name}`
answers what `who -o json` prints, `/debug/conflicts` what `audit -o json` prints."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extender.cli import main
from extender.kube.snapshot import load_objects
from tests.conftest import REPO, ExtenderClient, MakeExtender
from tests.objects import filter_args, node, pod, port

SAMPLE = str(REPO / "config" / "samples" / "cluster.yaml")


async def sample_extender(make_extender: MakeExtender) -> ExtenderClient:
    objects = load_objects([SAMPLE])
    client, _ = await make_extender(objects.nodes, objects.pods)
    return client


async def get(client: ExtenderClient, path: str, status: int = 200) -> Any:
    response = await client.get(path)
    assert response.status == status
    assert response.content_type == "application/json"
    return await response.json()


def cli_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    main([*argv, "--snapshot", SAMPLE, "-o", "json"])
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("path", "argv"),
    [
        ("/debug/nodes/ip-10-0-1-13.ec2.internal", ["who", "ip-10-0-1-13.ec2.internal"]),
        (
            "/debug/nodes/ip-10-0-1-15.ec2.internal?port=80/TCP",
            ["who", "ip-10-0-1-15.ec2.internal", "80/TCP"],
        ),
    ],
)
async def test_debug_node_is_who(
    path: str, argv: list[str], make_extender: MakeExtender, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server's view of a node is exactly the document `who -o json` prints."""
    client = await sample_extender(make_extender)
    assert await get(client, path) == cli_json(argv, capsys)


async def test_debug_conflicts_is_audit(
    make_extender: MakeExtender, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server reports the same conflicts and ephemeral-range risks as `audit -o json`; the
    owner switch the CLI infers from the evicted pod is not in the server's index history."""
    client = await sample_extender(make_extender)
    served = await get(client, "/debug/conflicts")
    printed = cli_json(["audit"], capsys)
    assert served["conflicts"] == printed["conflicts"]
    assert {k: v for k, v in served.items() if k != "risks"} == {
        k: v for k, v in printed.items() if k != "risks"
    }
    assert served["risks"] == [r for r in printed["risks"] if r["risk"] == "ephemeral-port"]
    narrow = await get(client, "/debug/conflicts?ephemeral-range=32768-50000")
    assert (narrow["ephemeral_range"], narrow["risks"]) == ("32768-50000", [])


async def test_debug_conflicts_sees_udp_owner_switches(make_extender: MakeExtender) -> None:
    """A UDP port that moves from a hostPort pod to a hostNetwork pod while the extender runs
    shows as a risk, from the index's own history."""
    client, cluster = await make_extender([node("n1")])
    cluster.pods.upsert(pod("statsd-dnat", node="n1", ports=[port(8125, 8125, "UDP")]))
    cluster.pods.delete(pod("statsd-dnat", node="n1"))
    cluster.pods.upsert(
        pod("statsd", node="n1", host_network=True, ports=[port(8125, None, "UDP")])
    )
    report = await get(client, "/debug/conflicts")
    assert report["clean"] is True
    (risk,) = report["risks"]
    assert (risk["node"], risk["risk"], risk["ports"], risk["pod"]) == (
        "n1",
        "udp-owner-switch",
        "8125",
        "default/statsd",
    )


async def test_debug_node_shows_pods_in_flight(make_extender: MakeExtender) -> None:
    """After a filter call passes a pod, the node view shows its tentative reservation; after
    the bind, the pod's ports on the chosen node (snapshot mode applies the binding)."""
    client, _ = await make_extender([node("n1"), node("n2")])
    incoming = pod("ingress", ports=[port(80, 80)])
    response = await client.post("/filter", json=filter_args(incoming, ["n1", "n2"]))
    assert (await response.json())["NodeNames"] == ["n1", "n2"]
    (claim,) = (await get(client, "/debug/nodes/n2"))["claims"]
    assert (claim["kind"], claim["state"], claim["pod"]) == (
        "in-flight",
        "tentative",
        "default/ingress",
    )
    binding = {
        "PodName": "ingress",
        "PodNamespace": "default",
        "PodUID": "uid-ingress",
        "Node": "n2",
    }
    response = await client.post("/bind", json=binding)
    assert (await response.json())["Error"] == ""
    assert (await get(client, "/debug/nodes/n1"))["claims"] == []
    (held,) = (await get(client, "/debug/nodes/n2"))["claims"]
    assert (held["kind"], held["state"], held["pod"]) == ("hostPort", "active", "default/ingress")


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/debug/nodes/ip-10-0-1-99", 404, "node 'ip-10-0-1-99' unknown (5 nodes known)"),
        ("/debug/nodes/ip-10-0-1-13.ec2.internal?port=http", 400, "port 'http'"),
        ("/debug/conflicts?ephemeral-range=9-1", 400, "ephemeral range '9-1'"),
    ],
)
async def test_debug_errors_are_json(
    path: str, status: int, message: str, make_extender: MakeExtender
) -> None:
    """Bad names and parameters answer a JSON error with a 4xx status."""
    client = await sample_extender(make_extender)
    assert (await get(client, path, status))["Error"].startswith(message)


async def test_debug_views_are_read_only(make_extender: MakeExtender) -> None:
    """Only GET is served, and reading changes nothing in the index."""
    objects = load_objects([SAMPLE])
    client, cluster = await make_extender(objects.nodes, objects.pods)
    before = cluster.index.fingerprint()
    await get(client, "/debug/conflicts")
    await get(client, "/debug/nodes/ip-10-0-1-15.ec2.internal")
    for path in ("/debug/conflicts", "/debug/nodes/ip-10-0-1-15.ec2.internal"):
        response = await client.post(path, data=b"{}")
        assert response.status == 405
    assert cluster.index.fingerprint() == before


async def test_the_reason_names_the_workload_and_the_views_name_the_pod(
    make_extender: MakeExtender,
) -> None:
    """From a rejection to the pod: the filter reason names the Deployment; /debug/nodes on that
    node and port, and /debug/conflicts, name the exact ingress pod."""
    client = await sample_extender(make_extender)
    ingress_node = "ip-10-0-1-15.ec2.internal"
    response = await client.post(
        "/filter",
        data=json.dumps(filter_args(pod("web", ports=[port(80, 80)]), [ingress_node])),
        headers={"Content-Type": "application/json"},
    )
    reason = (await response.json())["FailedAndUnresolvableNodes"][ingress_node]
    assert "Deployment ingress-nginx/ingress-nginx-controller" in reason
    assert "7d9c5-r8n4k" not in reason
    view = await get(client, f"/debug/nodes/{ingress_node}?port=80")
    pods = {claim["pod"] for claim in view["claims"]}
    assert "ingress-nginx/ingress-nginx-controller-7d9c5-r8n4k" in pods
    assert "kube-system/eks-pod-identity-agent-h5k8m" in pods
    holders = {
        claim["holder"]
        for conflict in (await get(client, "/debug/conflicts"))["conflicts"]
        for claim in conflict["claims"]
    }
    assert "hostPort pod ingress-nginx/ingress-nginx-controller-7d9c5-r8n4k" in holders
