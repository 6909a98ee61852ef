"""Rejection reasons name the holder's workload, so the scheduler's message stays short."""

from __future__ import annotations

from typing import Any

import pytest

from extender.core.cluster import Cluster
from extender.core.decisions import filter_pod
from extender.core.pods import decode_pod, workload_of
from extender.core.ports import ClaimKind
from extender.settings import Settings
from tests.objects import RawDict, node, pod, port

AGENT_LISTEN = "80/TCP@169.254.170.23"
AGENT_REASON = (
    "80/TCP on 169.254.170.23 held by hostNetwork pods of DaemonSet scale/agent "
    "(undeclared listener, hostports.dev/listen)"
)


def owned(raw: RawDict, kind: str, name: str, **labels: str) -> RawDict:
    """`raw` with a controller ownerReference to `kind`/`name` (and extra labels)."""
    metadata = raw["metadata"]
    metadata["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": kind,
            "name": name,
            "uid": f"uid-{name}",
            "controller": True,
        }
    ]
    if labels:
        metadata["labels"] = labels
    return raw


@pytest.mark.parametrize(
    ("raw", "workload", "reason"),
    [
        (
            owned(
                pod("agent-x7k2p", namespace="kube-system", ports=[port(80, 80)]),
                "DaemonSet",
                "agent",
            ),
            "DaemonSet kube-system/agent",
            "80/TCP on every address held by hostPort pods of DaemonSet kube-system/agent",
        ),
        (
            owned(
                pod("web-7d9c5-4xkq2", namespace="shop", ports=[port(80, 80)]),
                "ReplicaSet",
                "web-7d9c5",
                **{"pod-template-hash": "7d9c5"},
            ),
            "Deployment shop/web",
            "80/TCP on every address held by hostPort pods of Deployment shop/web",
        ),
        (
            # A ReplicaSet whose name does not end in the pod's template hash has no Deployment.
            owned(pod("web-abcde", namespace="shop", ports=[port(80, 80)]), "ReplicaSet", "web"),
            "ReplicaSet shop/web",
            "80/TCP on every address held by hostPort pods of ReplicaSet shop/web",
        ),
        (
            owned(
                pod("db-0", namespace="data", host_network=True, ports=[port(5432)]),
                "StatefulSet",
                "db",
            ),
            "StatefulSet data/db",
            "5432/TCP on every address held by hostNetwork pods of StatefulSet data/db",
        ),
        (
            owned(
                pod("probe-29871234-abcde", ports=[port(8080, 8080, "UDP", "10.0.0.1")]),
                "Job",
                "probe-29871234",
            ),
            "Job default/probe-29871234",
            "8080/UDP on 10.0.0.1 held by hostPort pods of Job default/probe-29871234",
        ),
        (
            pod("bare", ports=[port(80, 80)]),
            "",
            "80/TCP on every address held by hostPort pod default/bare",
        ),
    ],
    ids=["DaemonSet", "Deployment", "ReplicaSet", "StatefulSet", "Job", "bare pod"],
)
def test_reason_names_the_workload(raw: RawDict, workload: str, reason: str) -> None:
    """Each controller kind gives one reason for all its pods; a bare pod is named itself."""
    record = decode_pod(raw)
    assert record.workload == workload
    assert [claim.reason for claim in record.claims] == [reason]


def test_the_holder_still_names_the_pod() -> None:
    """`holder` (who, audit, /debug/nodes) keeps the exact pod behind the claim."""
    raw = owned(
        pod("agent-x7k2p", namespace="kube-system", ports=[port(80, 80)]), "DaemonSet", "agent"
    )
    (claim,) = decode_pod(raw).claims
    assert claim.holder == "hostPort pod kube-system/agent-x7k2p"


@pytest.mark.parametrize(
    "references",
    [
        "nope",
        [{"kind": "DaemonSet", "name": "agent"}],  # not the controller
        [{"kind": "DaemonSet", "name": 5, "controller": True}],
        ["nope"],
    ],
)
def test_malformed_owner_references_name_the_pod(references: Any) -> None:
    """A reference that is not a well-formed controller leaves the pod named by itself."""
    assert workload_of({"ownerReferences": references}, "default") == ""


def agent_cluster(nodes: int, *, reserved_every: int = 0) -> tuple[Cluster, list[str]]:
    """`nodes` nodes, each running one pod of DaemonSet scale/agent (80 undeclared, 2703), and
    every `reserved_every`th node reserving 22 for sshd."""
    cluster = Cluster(Settings())
    names = [f"node-{index:05d}" for index in range(nodes)]
    cluster.nodes.replace(
        [
            node(
                name,
                {"hostports.dev/reserved": "22"}
                if reserved_every and i % reserved_every == 0
                else None,
            )
            for i, name in enumerate(names)
        ]
    )
    cluster.pods.replace(
        [
            owned(
                pod(
                    f"agent-{index:05d}",
                    namespace="scale",
                    node=name,
                    host_network=True,
                    ports=[port(2703)],
                    annotations={"hostports.dev/listen": AGENT_LISTEN},
                ),
                "DaemonSet",
                "agent",
            )
            for index, name in enumerate(names)
        ]
    )
    return cluster, names


def test_distinct_reasons_are_bounded_by_workloads_not_nodes() -> None:
    """At 5,000 nodes, a pod wanting three ports held by one DaemonSet and by sshd on some
    nodes gets one reason per (port, holder), however many nodes reject it."""
    cluster, names = agent_cluster(5000, reserved_every=10)
    incoming = decode_pod(
        pod("web", ports=[port(22, 22), port(80, 80), port(2703, 2703)]), strict=True
    )
    rejected = filter_pod(cluster, incoming, names).final()
    assert len(rejected) == 5000
    reasons = set(rejected.values())
    assert len(reasons) <= 3 * 2  # ports of the pod x (one workload + one node-level kind)
    assert reasons == {
        "22/TCP on every address reserved by a host daemon on the node (hostports.dev/reserved)",
        AGENT_REASON,
    }
    only_2703 = decode_pod(pod("web", ports=[port(2703, 2703)]), strict=True)
    assert set(filter_pod(cluster, only_2703, names).final().values()) == {
        "2703/TCP on every address held by hostNetwork pods of DaemonSet scale/agent"
    }


def naive_rejections(cluster: Cluster, raw_pod: RawDict, names: list[str]) -> dict[str, str]:
    """node -> reason, read claim by claim (what the cached table answer must equal)."""
    incoming = decode_pod(raw_pod, strict=True)
    held = cluster.index.conflicts(incoming.wanted, names, (incoming.uid,))
    return {node: claim.reason for node, claim in held.items()}


def test_a_port_held_everywhere_answers_from_the_table_cache_and_follows_writes() -> None:
    """The reasons and kind counts of a port held on every node are cached with its table, and
    every write to the table (a holder added, replaced, gone) is seen by the next filter."""
    cluster, names = agent_cluster(50)
    wants_2703 = pod("statsd", host_network=True, ports=[port(2703)])
    incoming = decode_pod(wants_2703, strict=True)

    def verdict() -> tuple[dict[str, str], dict[Any, int] | None]:
        found = filter_pod(cluster, incoming, names)
        return found.final(), dict(found.held_kinds) if found.held_kinds is not None else None

    rejected, kinds = verdict()
    assert rejected == naive_rejections(cluster, wants_2703, names)
    assert len(rejected) == 50
    assert kinds == {ClaimKind.HOST_NETWORK: 50}
    assert verdict()[0] == rejected  # answered again from the cache: the same
    # A write to the table: node-00007's agent is replaced by a hostPort pod of another workload.
    cluster.pods.delete(cluster_pod(cluster, "node-00007"))
    assert "node-00007" not in verdict()[0]
    cluster.pods.upsert(
        owned(pod("proxy", namespace="edge", node="node-00007", ports=[port(2703, 2703)]),
              "DaemonSet", "proxy")
    )  # fmt: skip
    rejected, kinds = verdict()
    assert rejected == naive_rejections(cluster, wants_2703, names)
    assert rejected["node-00007"].endswith("held by hostPort pods of DaemonSet edge/proxy")
    assert kinds == {ClaimKind.HOST_NETWORK: 49, ClaimKind.HOST_PORT: 1}
    cluster.pods.delete(cluster_pod(cluster, "node-00008"))
    rejected, kinds = verdict()
    assert "node-00008" not in rejected
    assert kinds == {ClaimKind.HOST_NETWORK: 48, ClaimKind.HOST_PORT: 1}


def cluster_pod(cluster: Cluster, node_name: str) -> RawDict:
    """The raw agent pod of agent_cluster() on `node_name`, as a DELETED event carries it."""
    index = int(node_name.split("-")[1])
    return pod(f"agent-{index:05d}", namespace="scale", node=node_name, host_network=True)


def test_a_pod_bound_elsewhere_keeps_the_table_fast_path_and_never_rejects_itself() -> None:
    """The incoming pod holds 9000 on node-00003 and 2703 on node-00004 (as a bound pod does
    when the scheduler asks about it again): it is not rejected where it holds 2703 itself, the
    other nodes' reasons equal the claim-by-claim ones, and for a port it holds nowhere the
    cached table answer still applies."""
    cluster, names = agent_cluster(20)
    cluster.pods.delete(cluster_pod(cluster, "node-00004"))
    cluster.pods.upsert(pod("statsd", node="node-00003", ports=[port(9000, 9000)]))
    wants_2703 = pod("statsd", host_network=True, ports=[port(2703)])
    found = filter_pod(cluster, decode_pod(wants_2703, strict=True), names)
    assert "node-00004" in found.passed  # nobody holds 2703 there
    assert found.final() == naive_rejections(cluster, wants_2703, names)
    assert found.held_kinds == {ClaimKind.HOST_NETWORK: 19}  # the table's cache answered
    cluster.pods.upsert(pod("statsd", node="node-00004", ports=[port(2703, 2703)]))
    again = filter_pod(cluster, decode_pod(wants_2703, strict=True), names)
    assert "node-00004" in again.passed  # its own claim there does not reject it
    assert again.final() == naive_rejections(cluster, wants_2703, names)
