"""What kube-scheduler would print from our real filter answers, at the issue's cluster sizes."""

from __future__ import annotations

import pytest

from tests.conftest import MakeExtender
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
