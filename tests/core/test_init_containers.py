"""Plain init containers against the kubelet's rules: which host ports block a node, which not."""

from __future__ import annotations

import pytest

from extender.core.cluster import Cluster
from extender.core.decisions import filter_pod
from extender.core.pods import decode_pod
from extender.settings import Settings
from tests.objects import RawDict, node, pod, port

HOLDS_7000 = pod("holder", node="n1", ports=[port(7000, 7000)])


@pytest.mark.parametrize(
    ("running", "incoming", "blocked"),
    [
        # The pod being scheduled: its plain init container's hostPort counts only with hostNetwork.
        (HOLDS_7000, pod("new", init_ports=[port(7000, 7000)]), False),
        (HOLDS_7000, pod("new", host_network=True, init_ports=[port(7000)]), True),
        (HOLDS_7000, pod("new", sidecar_ports=[port(7000, 7000)]), True),
        # A pod already running: plain init containers are done, whatever the network.
        (
            pod("old", node="n1", init_ports=[port(7000, 7000)]),
            pod("new", ports=[port(7000, 7000)]),
            False,
        ),
        (
            pod("old", node="n1", host_network=True, init_ports=[port(7000)]),
            pod("new", ports=[port(7000, 7000)]),
            False,
        ),
        (
            pod("old", node="n1", sidecar_ports=[port(7000, 7000)]),
            pod("new", ports=[port(7000, 7000)]),
            True,
        ),
    ],
    ids=[
        "new-plain-init",
        "new-hostNetwork-init",
        "new-sidecar",
        "running-plain-init",
        "running-hostNetwork-init",
        "running-sidecar",
    ],
)
def test_plain_init_container_conflicts(running: RawDict, incoming: RawDict, blocked: bool) -> None:
    """Whether n1 is refused to the incoming pod, with a pod holding 7000 (or not) there."""
    cluster = Cluster(Settings())
    cluster.nodes.replace([node("n1")])
    cluster.pods.replace([running])
    verdict = filter_pod(cluster, decode_pod(incoming, strict=True), ["n1"])
    assert ("n1" in verdict.final()) is blocked
    assert (verdict.passed == []) is blocked
