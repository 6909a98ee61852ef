"""The agent's manifests keep the properties the design depends on (config/agent)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_deploy_manifests import render, schema_errors

CONFIG = Path(__file__).resolve().parents[2] / "config" / "agent"


def _objects(name: str) -> list[Any]:
    return [raw for raw in yaml.safe_load_all((CONFIG / name).read_text()) if raw]


def test_daemonset_sees_the_host_network_with_no_privileges() -> None:
    """hostNetwork, every taint tolerated, NODE_NAME from the downward API, nothing privileged."""
    (raw_ds,) = _objects("daemonset.yaml")
    pod = raw_ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["hostNetwork"] is True
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in (
        container["env"]
    )
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert "ports" not in container  # it must not hold a host port itself
    assert container["resources"]["limits"]["memory"] == "128Mi"


def test_namespace_admits_host_network_and_is_not_routed() -> None:
    """hostNetwork needs the privileged Pod Security level; the routing webhook must skip it."""
    (raw_namespace,) = _objects("namespace.yaml")
    labels = raw_namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    assert labels["hostports.dev/routing"] == "disabled"
    (raw_kustomization,) = _objects("kustomization.yaml")
    assert raw_kustomization["namespace"] == raw_namespace["metadata"]["name"]


def test_rbac_allows_only_get_and_patch_nodes() -> None:
    """The agent's role reads and patches nodes and nothing else."""
    kinds = {raw["kind"]: raw for raw in _objects("rbac.yaml")}
    assert kinds["ClusterRole"]["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}
    ]
    subject = kinds["ClusterRoleBinding"]["subjects"][0]
    assert subject["name"] == kinds["ServiceAccount"]["metadata"]["name"]


def test_conntrack_component_adds_only_net_admin() -> None:
    """The opt-in conntrack component adds the flag and NET_ADMIN, keeping every other drop."""
    (raw_component,) = _objects("conntrack/kustomization.yaml")
    operations = yaml.safe_load(raw_component["patches"][0]["patch"])
    values = {op["path"]: op["value"] for op in operations}
    assert values["/spec/template/spec/containers/0/args/-"] == "--flush-stale-udp-conntrack"
    assert values["/spec/template/spec/containers/0/securityContext/capabilities"] == {
        "drop": ["ALL"],
        "add": ["NET_ADMIN"],
    }


def _render_with_conntrack(tmp_path: Path) -> list[Any]:
    """An overlay of config/agent with the conntrack component, rendered by kubectl."""
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl is needed to render the kustomize trees"
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = os.path.relpath(CONFIG, overlay)  # kustomize refuses absolute roots
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{base}]\ncomponents: [{base}/conntrack]\n"
    )
    result = subprocess.run(
        [kubectl, "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [raw for raw in yaml.safe_load_all(result.stdout) if raw]


@pytest.mark.parametrize("with_conntrack", [False, True], ids=["base", "conntrack"])
def test_rendered_objects_match_the_kubernetes_schema(tmp_path: Path, with_conntrack: bool) -> None:
    """kubectl kustomize renders every object with fields of its Kubernetes type only."""
    objects = _render_with_conntrack(tmp_path) if with_conntrack else render("agent")
    assert sorted(raw["kind"] for raw in objects) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Namespace",
        "ServiceAccount",
    ]
    for raw in objects:
        where = f"{raw['kind']}/{raw['metadata']['name']}"
        assert list(schema_errors(raw, f"V1{raw['kind']}", where)) == []
    (daemonset,) = [raw for raw in objects if raw["kind"] == "DaemonSet"]
    (agent,) = daemonset["spec"]["template"]["spec"]["containers"]
    assert agent["image"] == "hostport-extender:0.1.0"
    assert ("--flush-stale-udp-conntrack" in agent["args"]) is with_conntrack
