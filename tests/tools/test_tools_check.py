"""`hostport-extender check -f MANIFEST`: the nodes a workload's host ports would keep it off,
and the placement rules (selector, affinity, taints) that decide which nodes count."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from extender.cli import main
from extender.errors import ExtenderError
from extender.tools.placement import NodeFacts, PlacementError, Taint, constraints_of
from tests.conftest import REPO

SAMPLES = REPO / "config" / "samples"
SAMPLE = str(SAMPLES / "cluster.yaml")
DAEMONSET = str(SAMPLES / "eks-pod-identity-agent-daemonset.yaml")
INGRESS_NODES = [
    "ip-10-0-1-11.ec2.internal",
    "ip-10-0-1-12.ec2.internal",
    "ip-10-0-1-15.ec2.internal",
]


def check_json(
    manifest: str | Path, capsys: pytest.CaptureFixture[str], expected_code: int | None = None
) -> Any:
    code = main(["check", "-f", str(manifest), "--snapshot", SAMPLE, "-o", "json"])
    report = json.loads(capsys.readouterr().out)
    if expected_code is not None:
        assert code == expected_code
    return report


def write(tmp_path: Path, *documents: dict[str, Any]) -> Path:
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return path


def test_pod_identity_agent_daemonset_names_the_ingress_nodes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The agent's DaemonSet would fail on exactly the ingress nodes, because ingress-nginx
    holds hostPort 80 there; its own running pods are assumed replaced."""
    report = check_json(DAEMONSET, capsys, expected_code=1)
    (workload,) = report["workloads"]
    assert (workload["kind"], workload["namespace"], workload["name"]) == (
        "DaemonSet",
        "kube-system",
        "eks-pod-identity-agent",
    )
    assert workload["fits"] is False
    assert [b["node"] for b in workload["blocked"]] == INGRESS_NODES
    for blocked in workload["blocked"]:
        (reason,) = blocked["reasons"]
        assert reason == (
            "80/TCP on every address held by hostPort pods of "
            "Deployment ingress-nginx/ingress-nginx-controller"
        )
    assert workload["free"] == ["ip-10-0-1-13.ec2.internal", "ip-10-0-1-14.ec2.internal"]
    assert workload["untargeted"] == []
    assert workload["replacing"] == [
        "kube-system/eks-pod-identity-agent-h5k8m",
        "kube-system/eks-pod-identity-agent-q9d4s",
    ]
    assert workload["host_ports"] == "2703/TCP,2705/TCP,80/TCP@169.254.170.23,80/TCP@fd00:ec2::23"
    assert workload["summary"] == "would fail on 3 of 5 targeted nodes"


def test_daemonset_table(capsys: pytest.CaptureFixture[str]) -> None:
    """The table gives the verdict, then one line per node with why it is blocked."""
    assert main(["check", "-f", DAEMONSET, "--snapshot", SAMPLE]) == 1
    out = capsys.readouterr().out
    assert out.startswith("DaemonSet kube-system/eks-pod-identity-agent (")
    assert "  would fail on 3 of 5 targeted nodes\n" in out
    blocked = [line.split()[0] for line in out.splitlines() if " blocked " in line]
    assert blocked == INGRESS_NODES
    assert "approximate: placement honours" in out


def ingress_deployment(replicas: int, **template_spec: Any) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "ingress-nginx"}
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "controller",
                "image": "nginx",
                "ports": [{"containerPort": 80, "hostPort": 80}],
            }
        ],
        **template_spec,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "ingress-nginx-controller", "namespace": "ingress-nginx"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


@pytest.mark.parametrize(
    ("replicas", "fits", "summary"),
    [
        (3, True, "fits: 3 free nodes for 3 pods"),
        (5, False, "5 pods need 5 nodes, 3 free: 2 would stay Pending"),
    ],
)
def test_replicated_workload_counts_free_nodes(
    replicas: int, fits: bool, summary: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """hostPort replicas cannot share a node: the free nodes (its own replaced pods' nodes
    included; not the nodes where the agent binds :80) must be at least the replicas."""
    report = check_json(write(tmp_path, ingress_deployment(replicas)), capsys)
    (workload,) = report["workloads"]
    assert workload["exclusive"] is True
    assert (workload["fits"], workload["summary"]) == (fits, summary)
    assert [b["node"] for b in workload["blocked"]] == [
        "ip-10-0-1-13.ec2.internal",
        "ip-10-0-1-15.ec2.internal",
    ]
    assert len(workload["free"]) == 3
    assert report["fits"] is fits


def test_host_network_container_ports_are_host_ports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As the API server defaults it, a hostNetwork pod's containerPort is its hostPort."""
    deployment = ingress_deployment(1, hostNetwork=True)
    del deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["hostPort"]
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"].append({"containerPort": 9100})
    deployment["metadata"]["name"] = deployment["metadata"]["namespace"] = "edge"
    (workload,) = check_json(write(tmp_path, deployment), capsys)["workloads"]
    assert workload["host_ports"] == "80/TCP,9100/TCP"
    assert workload["free"] == []
    assert workload["summary"] == "1 pods need 1 nodes, 0 free: 1 would stay Pending"


def pod_template(ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": "c", "image": "busybox", "ports": ports}]}}


EVERY_KIND = [
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"}},
    {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe"},
        **pod_template([{"containerPort": 80, "hostPort": 80}]),
    },
    {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "data"},
        "spec": {"replicas": 2, "template": pod_template([{"containerPort": 5432}])},
    },
    {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "statsd", "namespace": "metrics"},
        "spec": {
            "replicas": 3,
            "template": pod_template(
                [{"containerPort": 8125, "hostPort": 8125, "protocol": "UDP"}]
            ),
        },
    },
    {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "scan"},
        "spec": {
            "parallelism": 2,
            "template": pod_template([{"containerPort": 2703, "hostPort": 2703}]),
        },
    },
    {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly"},
        "spec": {
            "jobTemplate": {
                "spec": {"template": pod_template([{"containerPort": 443, "hostPort": 443}])}
            }
        },
    },
    {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "exporter", "namespace": "monitoring"},
        "spec": {
            "selector": {"matchLabels": {"app": "other"}},
            "template": {
                "spec": {
                    "hostNetwork": True,
                    "containers": [{"name": "e", "ports": [{"containerPort": 9100}]}],
                }
            },
        },
    },
]


def test_every_workload_kind_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`-f -` reads a multi-document stream; each workload kind finds its pod template and pod
    count, and kinds that create no pods are listed as skipped."""
    stream = io.TextIOWrapper(io.BytesIO(yaml.safe_dump_all(EVERY_KIND).encode()))
    monkeypatch.setattr(sys, "stdin", stream)
    assert main(["check", "-f", "-", "--snapshot", SAMPLE, "-o", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["skipped"] == ["Service shop/web"]
    answers = {
        (w["kind"], w["namespace"], w["name"]): (w["replicas"], w["fits"], len(w["blocked"]))
        for w in report["workloads"]
    }
    assert answers == {
        ("Pod", "default", "probe"): (1, True, 4),
        ("StatefulSet", "data", "db"): (2, True, 0),
        ("ReplicaSet", "metrics", "statsd"): (3, True, 2),
        ("Job", "default", "scan"): (2, True, 2),
        ("CronJob", "default", "nightly"): (1, True, 3),
        ("DaemonSet", "monitoring", "exporter"): (None, False, 5),
    }
    assert all(w["source"].startswith("stdin, document ") for w in report["workloads"])


def test_check_as_a_process_reading_stdin() -> None:
    """The real command reads stdin, prints YAML, and exits 1 when something does not fit."""
    result = subprocess.run(
        [sys.executable, "-m", "extender", "check", "-f", "-", "--snapshot", SAMPLE, "-o", "yaml"],
        input=Path(DAEMONSET).read_text(),
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    report = yaml.safe_load(result.stdout)
    assert [b["node"] for b in report["workloads"][0]["blocked"]] == INGRESS_NODES
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("kind: Pod\nmetadata: {name: [oops\n", "is neither JSON nor YAML"),
        ("just text\n", "document 1: expected Kubernetes objects, found str"),
        (
            "kind: Deployment\nmetadata: {name: d}\nspec: {}\n",
            "Deployment default/d: the pod spec has no containers list",
        ),
        ("kind: Pod\nspec: {containers: []}\n", "document 1: Pod without metadata.name"),
        (
            "kind: Deployment\nmetadata: {name: d}\n"
            "spec: {replicas: -1, template: {spec: {containers: []}}}\n",
            "spec.replicas must be a non-negative integer, got -1",
        ),
        (
            "kind: Pod\nmetadata: {name: p}\n"
            "spec: {containers: [{name: c, ports: [{containerPort: '80', hostPort: 80}]}]}\n",
            "Pod default/p: Pod.spec.containers[0].ports[0].containerPort must be an integer",
        ),
        (
            "kind: Pod\nmetadata: {name: p, annotations: {hostports.dev/listen: '80/XTP'}}\n"
            "spec: {hostNetwork: true, containers: []}\n",
            "invalid annotation hostports.dev/listen on pod default/p",
        ),
        (
            "kind: Pod\nmetadata: {name: p}\nspec: {containers: [], affinity: {nodeAffinity: "
            "{requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: "
            "[{matchExpressions: [{key: a, operator: Near, values: [b]}]}]}}}}\n",
            "operator 'Near' is not one of",
        ),
        (
            "---\nkind: ConfigMap\n---\nkind: Job\nmetadata: {name: j}\nspec: []\n",
            "document 2: Job default/j: spec must be an object",
        ),
    ],
)
def test_bad_manifests_are_one_line(
    content: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest mistake names the file, the document and the field, on one line, exit 2."""
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert main(["check", "-f", str(path), "--snapshot", SAMPLE]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err
    assert str(path) in captured.err
    assert captured.err.count("\n") == 1


def test_unreadable_manifest(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A missing file is one line naming it."""
    assert main(["check", "-f", str(tmp_path / "missing.yaml"), "--snapshot", SAMPLE]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"hostport-extender: error: cannot read manifest {tmp_path / 'missing.yaml'}: "
        "No such file or directory\n"
    )


def test_unreadable_snapshot(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing snapshot is one line naming it, for every tool."""
    for argv in (["audit"], ["who", "n1"], ["check", "-f", DAEMONSET]):
        assert main([*argv, "--snapshot", "/nonexistent/dump.yaml"]) == 2
        err = capsys.readouterr().err
        assert (
            err == "hostport-extender: error: cannot read snapshot /nonexistent/dump.yaml: "
            "No such file or directory\n"
        )


# --- placement rules -------------------------------------------------------------------------

NODE = NodeFacts(
    "n1",
    {"kubernetes.io/os": "linux", "zone": "a", "cores": "8"},
    (Taint("dedicated", "ingress", "NoSchedule"), Taint("soft", "", "PreferNoSchedule")),
)
TOLERATE_INGRESS = [{"key": "dedicated", "value": "ingress", "effect": "NoSchedule"}]


def affinity(
    *expressions: dict[str, Any], fields: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    term: dict[str, Any] = {"matchExpressions": list(expressions)}
    if fields:
        term["matchFields"] = fields
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    }


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({}, "taint dedicated=ingress:NoSchedule is not tolerated"),
        ({"tolerations": TOLERATE_INGRESS}, None),
        ({"tolerations": [{"operator": "Exists"}]}, None),
        ({"tolerations": [{"key": "dedicated", "operator": "Exists"}]}, None),
        (
            {"tolerations": [{"key": "dedicated", "value": "batch"}]},
            "taint dedicated=ingress:NoSchedule is not tolerated",
        ),
        (
            {"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}]},
            "taint dedicated=ingress:NoSchedule is not tolerated",
        ),
        ({"tolerations": TOLERATE_INGRESS, "nodeSelector": {"zone": "a"}}, None),
        (
            {"tolerations": TOLERATE_INGRESS, "nodeSelector": {"zone": "b"}},
            "nodeSelector zone=b does not match (zone=a)",
        ),
        (
            {"tolerations": TOLERATE_INGRESS, "nodeSelector": {"gpu": "yes"}},
            "nodeSelector gpu=yes does not match (no label gpu)",
        ),
        (
            {
                "tolerations": TOLERATE_INGRESS,
                "affinity": affinity({"key": "zone", "operator": "In", "values": ["a", "b"]}),
            },
            None,
        ),
        (
            {
                "tolerations": TOLERATE_INGRESS,
                "affinity": affinity({"key": "zone", "operator": "NotIn", "values": ["a"]}),
            },
            "required node affinity does not match (zone NotIn [a])",
        ),
        (
            {
                "tolerations": TOLERATE_INGRESS,
                "affinity": affinity({"key": "gpu", "operator": "NotIn", "values": ["a"]}),
            },
            None,
        ),
        (
            {
                "tolerations": TOLERATE_INGRESS,
                "affinity": affinity({"key": "zone", "operator": "Exists"}),
            },
            None,
        ),
        (
            {
                "tolerations": TOLERATE_INGRESS,
                "affinity": affinity({"key": "zone", "operator": "DoesNotExist"}),
            },
            "required node affinity does not match (zone DoesNotExist)",
        ),
        (
            {
                "tolerations": TOLERATE_INGRESS,
                "affinity": affinity({"key": "cores", "operator": "Gt", "values": ["4"]}),
            },
            None,
        ),
        (
            {
                "tolerations": TOLERATE_INGRESS,
                "affinity": affinity({"key": "cores", "operator": "Lt", "values": ["4"]}),
            },
            "required node affinity does not match (cores Lt [4])",
        ),
        (
            {
                "tolerations": TOLERATE_INGRESS,
                "affinity": affinity({"key": "zone", "operator": "Gt", "values": ["4"]}),
            },
            "required node affinity does not match (zone Gt [4])",
        ),
        (
            {
                "tolerations": TOLERATE_INGRESS,
                "affinity": affinity(
                    fields=[{"key": "metadata.name", "operator": "In", "values": ["n1"]}]
                ),
            },
            None,
        ),
        (
            {
                "tolerations": TOLERATE_INGRESS,
                "affinity": affinity(
                    fields=[{"key": "metadata.name", "operator": "In", "values": ["n2"]}]
                ),
            },
            "required node affinity does not match (metadata.name In [n2])",
        ),
        (
            {"tolerations": TOLERATE_INGRESS, "affinity": affinity()},
            "required node affinity does not match (no usable term)",
        ),
        ({"nodeName": "n1"}, None),
        ({"nodeName": "n2"}, "spec.nodeName is n2"),
    ],
)
def test_placement_rules(spec: dict[str, Any], reason: str | None) -> None:
    """nodeName, nodeSelector, required affinity (every operator, matchFields, OR of terms)
    and NoSchedule/NoExecute taints decide whether a node is targeted at all."""
    assert constraints_of(spec, daemonset=False).reason(NODE) == reason


def test_affinity_terms_are_ored() -> None:
    """One matching term is enough."""
    spec = affinity({"key": "zone", "operator": "In", "values": ["b"]})
    terms = spec["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    terms.append({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]})
    assert (
        constraints_of({"affinity": spec, "tolerations": TOLERATE_INGRESS}, daemonset=False).reason(
            NODE
        )
        is None
    )


@pytest.mark.parametrize(
    ("taint", "host_network", "daemonset_targets"),
    [
        (Taint("node.kubernetes.io/unschedulable", "", "NoSchedule"), False, True),
        (Taint("node.kubernetes.io/not-ready", "", "NoExecute"), False, True),
        (Taint("node.kubernetes.io/network-unavailable", "", "NoSchedule"), True, True),
        (Taint("node.kubernetes.io/network-unavailable", "", "NoSchedule"), False, False),
        (Taint("dedicated", "gpu", "NoSchedule"), True, False),
    ],
)
def test_daemonset_pods_tolerate_what_the_controller_adds(
    taint: Taint, host_network: bool, daemonset_targets: bool
) -> None:
    """DaemonSet pods get the controller's tolerations (cordoned, not-ready, and
    network-unavailable for hostNetwork); other pods do not."""
    facts = NodeFacts("n1", {}, (taint,))
    spec = {"hostNetwork": host_network}
    assert (constraints_of(spec, daemonset=True).reason(facts) is None) is daemonset_targets
    assert constraints_of(spec, daemonset=False).reason(facts) is not None


@pytest.mark.parametrize(
    "spec",
    [
        {"nodeSelector": ["a"]},
        {"tolerations": {"key": "a"}},
        {"tolerations": [{"operator": "Maybe"}]},
        {"affinity": affinity({"key": "a", "operator": "In", "values": []})},
        {"affinity": affinity({"key": "a", "operator": "Exists", "values": ["x"]})},
        {"affinity": affinity({"key": "a", "operator": "Gt", "values": ["x"]})},
        {"affinity": affinity({"operator": "Exists"})},
        {"nodeName": 7},
    ],
)
def test_malformed_placement_is_an_error(spec: dict[str, Any]) -> None:
    """Placement fields of the wrong shape are the operator's to fix, not silently ignored."""
    with pytest.raises(PlacementError):
        constraints_of(spec, daemonset=False)
    assert issubclass(PlacementError, ExtenderError)


def test_untargeted_nodes_are_listed_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A DaemonSet restricted to the ingress role only counts ingress nodes; the others are
    listed as not targeted, with the rule that excludes them."""
    daemonset = yaml.safe_load(Path(DAEMONSET).read_text())
    daemonset["spec"]["template"]["spec"]["nodeSelector"] = {"role": "ingress"}
    (workload,) = check_json(write(tmp_path, daemonset), capsys)["workloads"]
    assert [b["node"] for b in workload["blocked"]] == INGRESS_NODES
    assert workload["free"] == []
    assert {u["node"]: u["reason"] for u in workload["untargeted"]} == {
        "ip-10-0-1-13.ec2.internal": "nodeSelector role=ingress does not match (no label role)",
        "ip-10-0-1-14.ec2.internal": "nodeSelector role=ingress does not match (no label role)",
    }
    assert workload["summary"] == "would fail on 3 of 3 targeted nodes"


def test_workload_without_host_ports_fits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A workload with no host ports is never kept off a node by ports: exit 0."""
    path = write(
        tmp_path,
        {
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"replicas": 9, "template": pod_template([{"containerPort": 8080}])},
        },
    )
    assert main(["check", "-f", str(path), "--snapshot", SAMPLE]) == 0
    out = capsys.readouterr().out
    assert "host ports: none" in out
    assert "no host ports: ports never keep it off a node" in out


def test_namespace_option_places_objects_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`-n` puts namespace-less objects where `kubectl apply -n` would, so the workload's own
    running pods are found there and replaced."""
    deployment = ingress_deployment(3)
    del deployment["metadata"]["namespace"]
    path = write(tmp_path, deployment)
    main(["check", "-f", str(path), "-n", "ingress-nginx", "--snapshot", SAMPLE, "-o", "json"])
    (workload,) = json.loads(capsys.readouterr().out)["workloads"]
    assert workload["namespace"] == "ingress-nginx"
    assert len(workload["replacing"]) == 3
    main(["check", "-f", str(path), "--snapshot", SAMPLE, "-o", "json"])
    (elsewhere,) = json.loads(capsys.readouterr().out)["workloads"]
    assert (elsewhere["namespace"], elsewhere["replacing"], elsewhere["fits"]) == (
        "default",
        [],
        False,
    )


def test_a_dump_without_nodes_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kubectl get pods` alone cannot say where a workload fits: one line says what to dump."""
    dump = tmp_path / "pods.json"
    dump.write_text(json.dumps({"kind": "List", "items": []}))
    assert main(["check", "-f", DAEMONSET, "--snapshot", str(dump)]) == 2
    assert "no Node objects to check against" in capsys.readouterr().err
