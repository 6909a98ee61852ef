"""Materialising `hostports.dev/listen` as declared container ports: the plan, its JSON patch,
and that the patched pod still passes the API server's port rules."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from extender.core.listeners import MAX_DECLARED_PORTS, json_patch, plan_listen_ports

IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9]|-(?!-))*[a-z0-9]$|^[a-z]$")


def agent(
    listen: Any,
    *,
    ports: list[dict[str, Any]] | None = None,
    containers: int = 1,
    host_network: bool = True,
) -> dict[str, Any]:
    """A hostNetwork agent pod as the API server hands it to a mutating webhook."""
    spec: dict[str, Any] = {
        "containers": [{"name": f"c{i}", "image": "agent"} for i in range(containers)],
    }
    if ports is not None:
        spec["containers"][0]["ports"] = ports
    if host_network:
        spec["hostNetwork"] = True
    metadata: dict[str, Any] = {"generateName": "agent-", "namespace": "kube-system"}
    if listen is not None:
        metadata["annotations"] = {"hostports.dev/listen": listen}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def apply(raw_pod: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply RFC 6902 `add` operations (object members, or `-` to append to a list)."""
    result = copy.deepcopy(raw_pod)
    for operation in patch:
        assert operation["op"] == "add"
        *parents, leaf = operation["path"].strip("/").split("/")
        target: Any = result
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if leaf == "-":
            assert isinstance(target, list)
            target.append(operation["value"])
        else:
            assert isinstance(target, dict)
            assert leaf not in target, "add must not replace"
            target[leaf] = operation["value"]
    return result


def validation_errors(raw_pod: dict[str, Any]) -> list[str]:
    """The API server's rules for a hostNetwork pod's container ports."""
    errors = []
    host_keys: set[tuple[str, str, int]] = set()
    names: set[str] = set()
    for i, container in enumerate(raw_pod["spec"]["containers"]):
        keys: set[tuple[int, str]] = set()
        for j, port in enumerate(container.get("ports", [])):
            where = f"containers[{i}].ports[{j}]"
            protocol = port.get("protocol", "TCP")
            if port.get("hostPort", port["containerPort"]) != port["containerPort"]:
                errors.append(f"{where}: hostPort must match containerPort")
            # hostNetwork: the API server defaults hostPort to containerPort.
            host_key = (
                port.get("hostIP", ""),
                protocol,
                port.get("hostPort", port["containerPort"]),
            )
            if host_key in host_keys:
                errors.append(f"{where}: duplicate host port {host_key}")
            host_keys.add(host_key)
            if (port["containerPort"], protocol) in keys:
                errors.append(f"{where}: duplicate containerPort/protocol")
            keys.add((port["containerPort"], protocol))
            name = port.get("name")
            if name is not None:
                if len(name) > 15 or not IANA_SVC_NAME.match(name):
                    errors.append(f"{where}: bad name {name!r}")
                if name in names:
                    errors.append(f"{where}: duplicate name {name!r}")
                names.add(name)
    return errors


def declared(raw_pod: dict[str, Any]) -> list[tuple[int, str, str, str]]:
    """(container, port spec, name, container index) of every declared port, in order."""
    found = []
    for i, container in enumerate(raw_pod["spec"]["containers"]):
        for port in container.get("ports", []):
            spec = f"{port['containerPort']}/{port.get('protocol', 'TCP')}"
            if port.get("hostIP"):
                spec += f"@{port['hostIP']}"
            found.append((i, spec, port.get("name", ""), container["name"]))
    return found


HTTP = {"name": "http", "containerPort": 2703, "protocol": "TCP"}

CASES: list[tuple[str, dict[str, Any], list[str], list[str]]] = [
    ("IPv4 address", agent("80/TCP@169.254.170.23"), ["80/TCP@169.254.170.23"], []),
    ("IPv6 address", agent("80/tcp@[fd00:ec2:0::23]"), ["80/TCP@fd00:ec2::23"], []),
    ("every address", agent("8125/udp"), ["8125/UDP"], []),
    ("SCTP", agent("9899/SCTP"), ["9899/SCTP"], []),
    (
        "a small range",
        agent("30000-30003/UDP"),
        ["30000/UDP", "30001/UDP", "30002/UDP", "30003/UDP"],
        [],
    ),
    (
        "a range over the limit",
        agent(f"80/TCP,40000-{40000 + MAX_DECLARED_PORTS}/UDP"),
        ["80/TCP"],
        [
            f"40000-{40000 + MAX_DECLARED_PORTS}/UDP not declared: {MAX_DECLARED_PORTS + 1} "
            f"ports, over the {MAX_DECLARED_PORTS} a pod may gain (the extender still honours it)"
        ],
    ),
    (
        "duplicates in the annotation",
        agent("80/TCP, 80/tcp@0.0.0.0, 80/TCP@::"),
        ["80/TCP"],
        [],
    ),
    (
        "already declared exactly",
        agent("2703/TCP,2705/TCP", ports=[HTTP]),
        ["2705/TCP"],
        [],
    ),
    (
        "covered by a declared wildcard",
        agent("2703/TCP@169.254.170.23", ports=[HTTP]),
        [],
        [],
    ),
    (
        "same port, other protocol",
        agent("2703/UDP", ports=[HTTP]),
        ["2703/UDP"],
        [],
    ),
    (
        "same port on two addresses, one container",
        agent("80/TCP@169.254.170.23,80/TCP@fd00:ec2::23"),
        ["80/TCP@169.254.170.23"],
        [
            "80/TCP@fd00:ec2::23 not declared: every container already lists containerPort "
            "80/TCP, and a container lists a port/protocol once (the extender still honours it)"
        ],
    ),
    (
        "same port on two addresses, two containers",
        agent("80/TCP@169.254.170.23,80/TCP@fd00:ec2::23", containers=2),
        ["80/TCP@169.254.170.23", "80/TCP@fd00:ec2::23"],
        [],
    ),
    ("no annotation", agent(None), [], []),
    (
        "not hostNetwork",
        agent("80/TCP", host_network=False),
        [],
        ["hostports.dev/listen is declared only for hostNetwork pods"],
    ),
]


@pytest.mark.parametrize(
    ("raw_pod", "added", "notes"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_plan_and_patch(raw_pod: dict[str, Any], added: list[str], notes: list[str]) -> None:
    """The listed entries are declared, the rest noted; declared ports stay as they were."""
    plan = plan_listen_ports(raw_pod)
    assert plan.error == ""
    assert [port.spec for port in plan.added] == added
    assert list(plan.notes) == notes
    patched = apply(raw_pod, json_patch(plan, raw_pod))
    assert validation_errors(patched) == []
    before = declared(raw_pod)
    after = declared(patched)
    assert set(before) <= set(after), "a declared port was removed or changed"
    new = [entry for entry in after if entry not in before]
    assert sorted(spec for _, spec, _, _ in new) == sorted(added)
    for _, _, name, _ in new:
        assert name.startswith("hpl")
        assert len(name) <= 15
    pairs = zip(patched["spec"]["containers"], raw_pod["spec"]["containers"], strict=True)
    for container, port in pairs:
        assert {k: v for k, v in container.items() if k != "ports"} == {
            k: v for k, v in port.items() if k != "ports"
        }


def test_generated_names_never_collide() -> None:
    """A name the pod already uses gets a suffix; the result is unique and at most 15 chars."""
    taken = [{"name": "hpl80t", "containerPort": 9000, "protocol": "TCP"}]
    raw_pod = agent("80/TCP@10.0.0.1", ports=taken, containers=2)
    raw_pod["spec"]["containers"][1]["ports"] = [
        {"name": "hpl80t-2", "containerPort": 9001, "protocol": "TCP"}
    ]
    (port,) = plan_listen_ports(raw_pod).added
    assert port.name == "hpl80t-3"
    patched = apply(raw_pod, json_patch(plan_listen_ports(raw_pod), raw_pod))
    assert validation_errors(patched) == []


def test_the_patch_appends_to_existing_ports_and_creates_missing_lists() -> None:
    """`ports` is appended to where it exists (`-`), created where the container has none."""
    raw_pod = agent(
        "2705/TCP,80/TCP@169.254.170.23,80/TCP@fd00:ec2::23", ports=[HTTP], containers=2
    )
    patch = json_patch(plan_listen_ports(raw_pod), raw_pod)
    assert [(op["op"], op["path"]) for op in patch] == [
        ("add", "/spec/containers/0/ports/-"),
        ("add", "/spec/containers/0/ports/-"),
        ("add", "/spec/containers/1/ports"),
    ]
    assert patch[0]["value"] == {
        "name": "hpl2705t",
        "containerPort": 2705,
        "hostPort": 2705,
        "protocol": "TCP",
    }
    assert patch[2]["value"] == [
        {
            "name": "hpl80t-2",
            "containerPort": 80,
            "hostPort": 80,
            "protocol": "TCP",
            "hostIP": "fd00:ec2::23",
        }
    ]


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("80/TCP,http", "'http' is not a port number"),
        ("80/QUIC", "unknown protocol 'QUIC'"),
        ("80/TCP@not-an-ip", "does not appear to be an IPv4 or IPv6 address"),
        ("90-80/TCP", "range end 80 is below its start 90"),
        (["80/TCP"], "hostports.dev/listen must be a string"),
    ],
)
def test_invalid_annotation_declares_nothing(listen: Any, message: str) -> None:
    """A bad annotation leaves the pod unchanged and says why (the webhook warns with it)."""
    plan = plan_listen_ports(agent(listen))
    assert plan.added == ()
    assert message in plan.error
    assert json_patch(plan, agent(listen)) == []


def test_unreadable_declared_ports_declare_nothing() -> None:
    """A declared port the plan cannot read stops it: it never guesses around one."""
    raw_pod = agent("80/TCP", ports=[{"containerPort": "80"}])
    plan = plan_listen_ports(raw_pod)
    assert plan.added == ()
    assert plan.error == "cannot read the declared ports: containerPort '80' is not a number"
