"""Snapshot mode: Nodes and Pods from `kubectl get nodes,pods -A -o json|yaml` dumps.

Accepts a `v1 List` (or any object with `items`), a single object, a plain JSON/YAML list, and
multi-document YAML, in any number of files. Objects of other kinds are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from extender.core.sinks import RawObject
from extender.errors import SnapshotError


@dataclass(frozen=True, slots=True)
class SnapshotObjects:
    nodes: list[RawObject]
    pods: list[RawObject]
    skipped: int = 0


def load_objects(paths: Sequence[Path | str]) -> SnapshotObjects:
    """Read every file; raise SnapshotError naming the file for anything unreadable."""
    nodes: list[RawObject] = []
    pods: list[RawObject] = []
    skipped = 0
    for path in map(Path, paths):
        for raw in _objects_in(path):
            kind = _kind_of(raw)
            if kind == "Node":
                nodes.append(raw)
            elif kind == "Pod":
                pods.append(raw)
            else:
                skipped += 1
    return SnapshotObjects(nodes, pods, skipped)


def _objects_in(path: Path) -> Iterator[RawObject]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SnapshotError(f"cannot read snapshot {path}: {error.strerror or error}") from error
    documents: Iterable[Any]
    try:
        documents = [orjson.loads(data)]
    except orjson.JSONDecodeError:
        try:
            documents = list(yaml.load_all(data, Loader=_loader()))
        except yaml.YAMLError as error:
            raise SnapshotError(f"{path} is neither JSON nor YAML: {error}") from error
    for document in documents:
        yield from _flatten(document, path)


def _loader() -> type[yaml.SafeLoader]:
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _flatten(document: object, path: Path) -> Iterator[RawObject]:
    if document is None:
        return
    if isinstance(document, list):
        for item in document:
            yield from _flatten(item, path)
        return
    if not isinstance(document, dict):
        raise SnapshotError(f"{path}: expected Kubernetes objects, found {type(document).__name__}")
    items = document.get("items")
    if isinstance(items, list) and "spec" not in document:  # a List, PodList, NodeList...
        for item in items:
            yield from _flatten(item, path)
        return
    yield document


def _kind_of(raw: RawObject) -> str:
    kind = raw.get("kind")
    if isinstance(kind, str):
        return kind
    spec = raw.get("spec")
    if isinstance(spec, dict) and "containers" in spec:
        return "Pod"
    return "Node" if isinstance(raw.get("status"), dict) and "nodeInfo" in raw["status"] else ""
