"""The synthetic cluster generator: reproducible, shaped like a kubectl dump, a realistic mix."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.generate import (
    BASE_RESERVED,
    DAEMONSETS,
    LISTEN_ANNOTATION,
    RESERVED_ANNOTATION,
    WEB_HOSTPORT,
    ClusterSpec,
    ensure_snapshot,
    main,
    write_snapshot,
)
from bench.ingest import load
from extender.core.cluster import Cluster
from extender.core.pods import decode_node, decode_pod
from extender.core.portspec import parse_port_specs
from extender.kube.snapshot import load_objects
from extender.settings import Settings

SPEC = ClusterSpec(nodes=200, pods_per_node=30, seed=1)


def _dump(spec: ClusterSpec) -> bytes:
    out = io.BytesIO()
    write_snapshot(spec, out)
    return out.getvalue()


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(_dump(SPEC))
    return loaded


def _split(dump: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    nodes = [item for item in dump["items"] if item["kind"] == "Node"]
    pods = [item for item in dump["items"] if item["kind"] == "Pod"]
    return nodes, pods


def _host_ports(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        port
        for container in pod["spec"]["containers"]
        for port in container.get("ports", [])
        if port.get("hostPort")
    ]


def test_same_seed_gives_identical_bytes() -> None:
    """One seed always produces the same snapshot, byte for byte."""
    spec = ClusterSpec(nodes=20, pods_per_node=30, seed=7)
    assert _dump(spec) == _dump(spec)


def test_other_seed_gives_another_cluster() -> None:
    """A different seed changes the cluster, not just a label."""
    assert _dump(ClusterSpec(20, 30, 7)) != _dump(ClusterSpec(20, 30, 8))


def test_dump_is_a_kubectl_list(cluster: dict[str, Any]) -> None:
    """The file has the shape of `kubectl get nodes,pods -A -o json`: a v1 List of objects."""
    assert cluster["apiVersion"] == "v1"
    assert cluster["kind"] == "List"
    assert cluster["metadata"] == {"resourceVersion": ""}
    nodes, pods = _split(cluster)
    assert len(nodes) == SPEC.nodes
    assert len(pods) == SPEC.pods
    assert all(item["apiVersion"] == "v1" for item in cluster["items"])
    uids = [item["metadata"]["uid"] for item in cluster["items"]]
    assert len(set(uids)) == len(uids)
    keys = [(pod["metadata"]["namespace"], pod["metadata"]["name"]) for pod in pods]
    assert len(set(keys)) == len(keys)


def test_nodes_look_like_real_nodes(cluster: dict[str, Any]) -> None:
    """Nodes carry labels, capacity, conditions, addresses and an image list, like real ones."""
    nodes, _ = _split(cluster)
    for node in nodes:
        name = node["metadata"]["name"]
        assert node["metadata"]["labels"]["kubernetes.io/hostname"] == name
        assert node["status"]["capacity"]["pods"] == "110"
        assert {c["type"] for c in node["status"]["conditions"]} >= {"Ready", "MemoryPressure"}
        assert node["status"]["addresses"][0]["type"] == "InternalIP"
        assert len(node["status"]["images"]) >= 18
        assert all(image["names"] and image["sizeBytes"] > 0 for image in node["status"]["images"])
    sizes = sorted(len(orjson.dumps(node)) for node in nodes)
    assert 5_000 < sizes[len(sizes) // 2] < 20_000


def test_pods_look_like_real_pods(cluster: dict[str, Any]) -> None:
    """Pods are bound via spec.nodeName and carry containers, tolerations, volumes and status."""
    nodes, pods = _split(cluster)
    names = {node["metadata"]["name"] for node in nodes}
    for pod in pods:
        spec = pod["spec"]
        assert spec["nodeName"] in names
        assert spec["containers"][0]["image"]
        assert spec["tolerations"]
        assert spec["volumes"][0]["projected"]["sources"]
        assert pod["metadata"]["ownerReferences"][0]["controller"] is True
        assert pod["status"]["phase"] in ("Running", "Succeeded")
        assert pod["status"]["hostIP"]
    sizes = sorted(len(orjson.dumps(pod)) for pod in pods)
    assert 2_500 < sizes[len(sizes) // 2] < 10_000


def test_every_node_runs_each_host_network_daemonset(cluster: dict[str, Any]) -> None:
    """Each DaemonSet runs one hostNetwork pod per node, hostPort defaulted as the API does."""
    nodes, pods = _split(cluster)
    per_node = Counter(
        (pod["spec"]["nodeName"], pod["metadata"]["ownerReferences"][0]["name"])
        for pod in pods
        if pod["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"
    )
    assert set(per_node.values()) == {1}
    assert len(per_node) == len(nodes) * len(DAEMONSETS)
    for pod in pods:
        if pod["metadata"]["ownerReferences"][0]["kind"] != "DaemonSet":
            continue
        assert pod["spec"]["hostNetwork"] is True
        declared = [port for c in pod["spec"]["containers"] for port in c.get("ports", [])]
        assert all(port["hostPort"] == port["containerPort"] for port in declared)
        listen = pod["metadata"]["annotations"].get(LISTEN_ANNOTATION, "")
        specs = parse_port_specs(listen)
        for port in declared:
            assert any(s.first <= port["containerPort"] <= s.last for s in specs), listen


def test_nodes_reserve_their_daemon_ports(cluster: dict[str, Any]) -> None:
    """Every node's reserved annotation parses and holds the kubelet and sshd ports."""
    nodes, _ = _split(cluster)
    for node in nodes:
        text = node["metadata"]["annotations"][RESERVED_ANNOTATION]
        assert text.startswith(BASE_RESERVED)
        ports = {s.first for s in parse_port_specs(text)}
        assert {22, 10250} <= ports


def test_mix_is_mostly_pods_without_host_ports(cluster: dict[str, Any]) -> None:
    """Most pods claim nothing, about 1 in 100 uses hostPort, some nodes hold the bench port."""
    nodes, pods = _split(cluster)
    workloads = [p for p in pods if p["metadata"]["ownerReferences"][0]["kind"] != "DaemonSet"]
    with_host_ports = [p for p in workloads if _host_ports(p)]
    assert 0.005 < len(with_host_ports) / len(workloads) < 0.05
    holders = {p["spec"]["nodeName"] for p in pods if WEB_HOSTPORT in _ports_of(p)}
    assert 0.03 * len(nodes) < len(holders) < 0.20 * len(nodes)
    assert any(port.get("hostIP") for p in with_host_ports for port in _host_ports(p))
    assert any(port["protocol"] == "UDP" for p in with_host_ports for port in _host_ports(p))


def _ports_of(pod: dict[str, Any]) -> set[int]:
    return {port["hostPort"] for port in _host_ports(pod)}


def test_pods_per_node_caps_the_daemonsets_too() -> None:
    """A node with room for two pods gets the first two DaemonSets and nothing else."""
    dump = orjson.loads(_dump(ClusterSpec(nodes=3, pods_per_node=2)))
    _, pods = _split(dump)
    assert len(pods) == 6
    assert {p["metadata"]["ownerReferences"][0]["name"] for p in pods} == {
        DAEMONSETS[0].name,
        DAEMONSETS[1].name,
    }


@pytest.mark.parametrize(("nodes", "pods_per_node"), [(0, 30), (-1, 1), (10, 111), (10, -1)])
def test_impossible_clusters_are_refused(nodes: int, pods_per_node: int) -> None:
    """Zero nodes or more pods than a kubelet runs are errors, not empty files."""
    with pytest.raises(ValueError, match="must be"):
        ClusterSpec(nodes, pods_per_node)


def test_cli_reports_a_bad_size_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m bench.generate --nodes 0` exits 2 with the reason."""
    with pytest.raises(SystemExit) as exited:
        main(["--nodes", "0"])
    assert exited.value.code == 2
    assert "nodes must be at least 1" in capsys.readouterr().err


def test_the_server_reads_every_object_without_problems(tmp_path: Path) -> None:
    """The server's snapshot loader and decoders accept every generated object as valid."""
    path = ensure_snapshot(tmp_path, ClusterSpec(nodes=50, pods_per_node=30))
    objects = load_objects([path])
    assert len(objects.nodes) == 50
    assert len(objects.pods) == 1500
    assert all(not decode_node(raw).problems for raw in objects.nodes)
    assert all(not decode_pod(raw).problems for raw in objects.pods)


def test_paged_ingest_builds_the_same_index_as_the_snapshot_path(tmp_path: Path) -> None:
    """The ingest benchmark (pages of upserts) measures the index `serve --snapshot` builds."""
    spec = ClusterSpec(nodes=40, pods_per_node=30, seed=3)
    paged, _, _ = load(spec)
    objects = load_objects([ensure_snapshot(tmp_path, spec)])
    served = Cluster(Settings())
    served.nodes.replace(objects.nodes)
    served.pods.replace(objects.pods)
    assert paged.index.fingerprint() == served.index.fingerprint()
    assert len(paged.index.fingerprint()) > spec.nodes * 4
