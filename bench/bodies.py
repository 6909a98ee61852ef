"""Request bodies shaped exactly like the captured kube-scheduler calls, scaled to big clusters.

The templates are the real v1.36 requests in ../shared/payloads/: we keep each Pod as captured and
only swap the node list (NodeNames, or a NodeList of generated nodes dressed like the captured
ones) and the binding's pod and node, so the server parses what a real scheduler would send.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.generate import RawObject

DEFAULT_PAYLOADS = Path(__file__).resolve().parent.parent.parent / "shared" / "payloads"
"""../shared/payloads beside the checkout, where CI and every worktree find the captures."""

HOSTPORT_POD = "filter-2.json"
"""The captured `hostport` pod (hostPort 18080/TCP)."""
PLAIN_POD = "filter-1.json"
"""The captured `plain` pod (no ports at all)."""
BIND = "bind-1.json"


class PayloadError(Exception):
    """A capture is missing or not the shape this harness expects."""


@dataclass(frozen=True, slots=True)
class Templates:
    """The captured requests the bodies are built from."""

    names_hostport: RawObject
    names_plain: RawObject
    nodes_hostport: RawObject
    nodes_plain: RawObject
    bind: RawObject
    node_managed_fields: list[Any]
    """A captured Node's managedFields: the scheduler's requests carry them."""


def _load(path: Path) -> RawObject:
    try:
        capture = orjson.loads(path.read_bytes())
        request = capture["request"]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as error:
        raise PayloadError(f"{path}: not a readable capture ({error})") from error
    if not isinstance(request, dict):
        raise PayloadError(f"{path}: 'request' is not a JSON object")
    return request


def load_templates(payloads: Path = DEFAULT_PAYLOADS) -> Templates:
    """Read the captures from `payloads` (the folder holding ncc-true/ and ncc-false/)."""
    nodes_hostport = _load(payloads / "ncc-false" / HOSTPORT_POD)
    try:
        managed = nodes_hostport["Nodes"]["items"][0]["metadata"].get("managedFields", [])
    except (KeyError, IndexError, TypeError) as error:
        raise PayloadError(f"{payloads}/ncc-false/{HOSTPORT_POD}: no Nodes.items") from error
    return Templates(
        names_hostport=_load(payloads / "ncc-true" / HOSTPORT_POD),
        names_plain=_load(payloads / "ncc-true" / PLAIN_POD),
        nodes_hostport=nodes_hostport,
        nodes_plain=_load(payloads / "ncc-false" / PLAIN_POD),
        bind=_load(payloads / "ncc-true" / BIND),
        node_managed_fields=managed,
    )


def names_body(template: RawObject, names: list[str]) -> bytes:
    """A nodeCacheCapable filter/prioritize request: the captured Pod, `Nodes: null`, our names."""
    return orjson.dumps({"Pod": template["Pod"], "Nodes": None, "NodeNames": names})


def request_node(raw_node: RawObject, managed_fields: list[Any]) -> RawObject:
    """A node as the scheduler sends it in a NodeList: no kind/apiVersion, with managedFields."""
    metadata = dict(raw_node["metadata"])
    metadata["managedFields"] = managed_fields
    return {"metadata": metadata, "spec": raw_node["spec"], "status": raw_node["status"]}


def nodes_body(template: RawObject, raw_nodes: list[RawObject], managed_fields: list[Any]) -> bytes:
    """A nodeCacheCapable=false filter/prioritize request: full Node objects, `NodeNames: null`."""
    items = [request_node(raw, managed_fields) for raw in raw_nodes]
    return orjson.dumps(
        {"Pod": template["Pod"], "Nodes": {"metadata": {}, "items": items}, "NodeNames": None}
    )


def bind_body(template: RawObject, name: str, namespace: str, uid: str, node: str) -> bytes:
    """A bind request for pod `namespace/name` onto `node`, keyed exactly like the capture."""
    body = dict(template)
    body |= {"PodName": name, "PodNamespace": namespace, "PodUID": uid, "Node": node}
    return orjson.dumps(body)
