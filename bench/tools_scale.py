"""How long `audit`, `check` and `who` take on a large cluster: prints one line per step.

    .venv/bin/python bench/tools_scale.py [--nodes 5000] [--pods-per-node 30]

Writes a synthetic `kubectl get nodes,pods -o json` dump (every node: reserved daemons,
node-exporter, statsd; a third of them ingress-nginx on hostPort 80/443; the Pod Identity Agent
with its annotated :80 binds everywhere else, plus one misplaced agent per 500 nodes on an
ingress node; the rest plain pods) and times each step in-process, end to end as an operator
runs them (JSON output to /dev/null). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from extender.cli import main
from extender.kube.snapshot import load_objects
from extender.settings import Settings
from extender.tools.audit import audit
from extender.tools.check import check_manifests
from extender.tools.manifests import read_manifests
from extender.tools.placement import node_facts
from extender.tools.source import build
from extender.tools.who import who

REPO = Path(__file__).resolve().parents[1]
DAEMONSET = REPO / "config" / "samples" / "eks-pod-identity-agent-daemonset.yaml"


def _pod(name: str, namespace: str, node: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    metadata = {"name": name, "namespace": namespace, "uid": f"{namespace}-{name}", **meta}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"nodeName": node, **spec},
        "status": {"phase": "Running"},
    }


def _ports(*entries: tuple[int, int | None, str]) -> list[dict[str, Any]]:
    ports = []
    for container, host, protocol in entries:
        entry: dict[str, Any] = {"containerPort": container, "protocol": protocol}
        if host is not None:
            entry["hostPort"] = host
        ports.append(entry)
    return [{"name": "c", "image": "x", "ports": ports}]


def cluster(nodes: int, pods_per_node: int) -> Iterator[dict[str, Any]]:
    agent = {"app.kubernetes.io/name": "eks-pod-identity-agent"}
    listen = {"hostports.dev/listen": "80/TCP@169.254.170.23, 80/TCP@fd00:ec2::23"}
    for i in range(nodes):
        name = f"ip-10-{i // 65536}-{i // 256 % 256}-{i % 256}.ec2.internal"
        ingress = i % 3 == 0
        labels = {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
        if ingress:
            labels["role"] = "ingress"
        yield {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": {"hostports.dev/reserved": "10250,10249,10256,22"},
            },
            "spec": {},
            "status": {"nodeInfo": {}},
        }
        yield _pod(
            f"exporter-{i}",
            "monitoring",
            name,
            {"hostNetwork": True, "containers": _ports((9100, None, "TCP"))},
        )
        yield _pod(f"statsd-{i}", "datadog", name, {"containers": _ports((8125, 8125, "UDP"))})
        if ingress:
            yield _pod(
                f"ingress-{i}",
                "ingress-nginx",
                name,
                {"containers": _ports((80, 80, "TCP"), (443, 443, "TCP"))},
            )
        if not ingress or i % 500 == 0:
            spec = {
                "hostNetwork": True,
                "containers": _ports((2703, None, "TCP"), (2705, None, "TCP")),
            }
            yield _pod(f"agent-{i}", "kube-system", name, spec, labels=agent, annotations=listen)
        for j in range(pods_per_node - 3):
            yield _pod(f"web-{i}-{j}", "shop", name, {"containers": _ports((8080, None, "TCP"))})


def timed(label: str, argv: list[str]) -> float:
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    seconds = time.perf_counter() - start
    print(f"{label:<44} {seconds * 1000:9.0f} ms  (exit {code}, {len(out.getvalue()):,} bytes)")
    return seconds


def run(step: Callable[[], None], label: str) -> None:
    start = time.perf_counter()
    step()
    print(f"{label:<44} {(time.perf_counter() - start) * 1000:9.0f} ms")


def breakdown(dump: Path) -> None:
    """Where the time goes: reading the dump, building the index, then each view alone."""
    start = time.perf_counter()
    objects = load_objects([dump])
    loaded_at = time.perf_counter()
    loaded = build(Settings(), objects)
    built_at = time.perf_counter()
    print(f"{'  read + parse the dump':<44} {(loaded_at - start) * 1000:9.0f} ms")
    print(f"{'  decode pods, build the index':<44} {(built_at - loaded_at) * 1000:9.0f} ms")
    nodes = [node_facts(raw) for raw in loaded.raw_nodes]
    manifests = read_manifests([str(DAEMONSET)], sys.stdin.buffer)
    first = nodes[0].name
    steps: list[tuple[str, Callable[[], object]]] = [
        ("  audit view", lambda: audit(loaded.cluster, finished_pods=loaded.finished).as_json()),
        (
            "  check view",
            lambda: check_manifests(loaded.cluster, nodes, loaded.raw_pods, manifests).as_json(),
        ),
        ("  who view", lambda: who(loaded.cluster, first).as_json()),
    ]
    for label, step in steps:
        start = time.perf_counter()
        step()
        print(f"{label:<44} {(time.perf_counter() - start) * 1000:9.0f} ms")


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods-per-node", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "cluster.json"

        def write() -> None:
            items = list(cluster(args.nodes, args.pods_per_node))
            dump.write_bytes(orjson.dumps({"kind": "List", "items": items}))

        run(write, f"generate {args.nodes} nodes x {args.pods_per_node} pods")
        print(f"dump: {dump.stat().st_size / 1e6:.0f} MB; python {sys.version.split()[0]}")
        breakdown(dump)
        snapshot = ["--snapshot", str(dump), "-o", "json"]
        timed("audit (load + audit + JSON)", ["audit", *snapshot])
        timed("check DaemonSet (load + check + JSON)", ["check", "-f", str(DAEMONSET), *snapshot])
        timed("who NODE (load + who + JSON)", ["who", "ip-10-0-0-0.ec2.internal", *snapshot])


if __name__ == "__main__":
    main_bench()
