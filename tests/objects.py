"""Builders of raw Kubernetes objects (plain dicts, as the API server sends them) for tests."""

from __future__ import annotations

from typing import Any

RawDict = dict[str, Any]


def port(
    container_port: int,
    host_port: int | None = None,
    protocol: str | None = None,
    host_ip: str | None = None,
) -> RawDict:
    entry: RawDict = {"containerPort": container_port}
    if host_port is not None:
        entry["hostPort"] = host_port
    if protocol is not None:
        entry["protocol"] = protocol
    if host_ip is not None:
        entry["hostIP"] = host_ip
    return entry


def pod(
    name: str,
    *,
    namespace: str = "default",
    uid: str | None = None,
    node: str = "",
    ports: list[RawDict] | None = None,
    host_network: bool = False,
    annotations: dict[str, str] | None = None,
    init_ports: list[RawDict] | None = None,
    sidecar_ports: list[RawDict] | None = None,
    phase: str = "Running",
    scheduler_name: str = "default-scheduler",
    deleting: bool = False,
) -> RawDict:
    spec: RawDict = {
        "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}],
        "schedulerName": scheduler_name,
    }
    if ports is not None:
        spec["containers"][0]["ports"] = ports
    if host_network:
        spec["hostNetwork"] = True
    if node:
        spec["nodeName"] = node
    init: list[RawDict] = []
    if init_ports is not None:
        init.append({"name": "init", "image": "busybox", "ports": init_ports})
    if sidecar_ports is not None:
        init.append(
            {"name": "sidecar", "image": "envoy", "restartPolicy": "Always", "ports": sidecar_ports}
        )
    if init:
        spec["initContainers"] = init
    metadata: RawDict = {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}"}
    if annotations:
        metadata["annotations"] = annotations
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-24T20:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": spec,
        "status": {"phase": phase},
    }


def node(name: str, annotations: dict[str, str] | None = None) -> RawDict:
    metadata: RawDict = {
        "name": name,
        "uid": f"uid-{name}",
        "labels": {"kubernetes.io/hostname": name},
    }
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": metadata,
        "spec": {},
        "status": {"nodeInfo": {"kubeletVersion": "v1.36.2"}},
    }


def filter_args(raw_pod: RawDict, nodes: list[str]) -> RawDict:
    """An ExtenderArgs body as a nodeCacheCapable scheduler sends it."""
    return {"Pod": raw_pod, "Nodes": None, "NodeNames": nodes}
