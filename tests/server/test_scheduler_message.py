"""What kube-scheduler would print from our real filter answers, at the issue's cluster sizes."""

from __future__ import annotations

import orjson
import pytest

from extender.kube.snapshot import load_objects
from tests.conftest import REPO, MakeExtender
from tests.fiterror import fit_error_message
from tests.objects import RawDict, filter_args, node, pod, port
from tests.server.test_http import post

REASON = (
    "80/TCP on 169.254.170.23 held by hostNetwork pods of DaemonSet scale/agent "
    "(undeclared listener, hostports.dev/listen)"
)


def agent(index: int, node_name: str) -> RawDict:
    """One pod of the hostNetwork DaemonSet scale/agent, which binds 80 without declaring it."""
    raw = pod(
        f"agent-{index:05d}",
        namespace="scale",
        node=node_name,
        host_network=True,
        annotations={"hostports.dev/listen": "80/TCP@169.254.170.23"},
    )
    raw["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "controller": True}
    ]
    return raw


@pytest.mark.parametrize("nodes", [1000, 5000])
async def test_one_daemonset_everywhere_gives_one_reason(
    make_extender: MakeExtender, nodes: int
) -> None:
    """A Deployment pod asking hostPort 80 on a cluster where the DaemonSet holds 80 on every
    node: one distinct reason over HTTP, and the scheduler's whole message stays under 2 KB."""
    names = [f"node-{index:05d}" for index in range(nodes)]
    client, _ = await make_extender(
        [node(name) for name in names], [agent(i, name) for i, name in enumerate(names)]
    )
    status, answer = await post(
        client, "filter", filter_args(pod("web-7d9c5-4xkq2", ports=[port(80, 80)]), names)
    )
    assert status == 200
    rejected = answer["FailedAndUnresolvableNodes"]
    assert (answer["NodeNames"], len(rejected), set(rejected.values())) == ([], nodes, {REASON})
    message = fit_error_message(nodes, rejected)
    assert message == f"0/{nodes} nodes are available: {nodes} {REASON}."
    assert len(message.encode()) < 2048


SAMPLE_BODY = REPO / "config" / "samples" / "filter-pod-identity-agent.json"
CORDONED = "ip-10-0-1-14.ec2.internal"


async def test_the_readme_shows_the_scheduler_message_for_the_sample(
    make_extender: MakeExtender,
) -> None:
    """The README's scheduler messages for the sample cluster are the rule applied to our real
    answers: the worked example with the free node cordoned, and the DaemonSet pod's one node."""
    objects = load_objects([str(REPO / "config" / "samples" / "cluster.yaml")])
    client, _ = await make_extender(objects.nodes, objects.pods)
    body = orjson.loads(SAMPLE_BODY.read_bytes())
    readme = (REPO / "README.md").read_text()

    body["NodeNames"] = [name for name in body["NodeNames"] if name != CORDONED]
    _, answer = await post(client, "filter", body)
    assert answer["NodeNames"] == []
    reasons = {**answer["FailedAndUnresolvableNodes"], CORDONED: "node(s) were unschedulable"}
    assert fit_error_message(5, reasons) + " preemption: ..." in readme

    # A DaemonSet pod: NodeAffinity (in-tree, before the extender) leaves its one node.
    target = "ip-10-0-1-11.ec2.internal"
    body["NodeNames"] = [target]
    _, answer = await post(client, "filter", body)
    elsewhere = [
        raw["metadata"]["name"] for raw in objects.nodes if raw["metadata"]["name"] != target
    ]
    others = dict.fromkeys(elsewhere, "node(s) didn't match Pod's node affinity/selector")
    reasons = {**answer["FailedAndUnresolvableNodes"], **others}
    assert fit_error_message(5, reasons) + " preemption: ..." in readme
