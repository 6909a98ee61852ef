"""The agent's manifests keep the properties the design depends on (config/agent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONFIG = Path(__file__).resolve().parent.parent / "config" / "agent"


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
