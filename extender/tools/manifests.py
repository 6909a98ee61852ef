"""Workload manifests (YAML or JSON, multi-document, Lists) -> the pod each workload would create.

Pure apart from reading the files it is given. A workload becomes a raw Pod built from its pod
template, so the same decoder the scheduler path uses (`decode_pod`, with the API's defaulting of
hostNetwork containerPort -> hostPort) says which ports it wants. Kinds that create no pods
(Services, ConfigMaps...) are skipped and listed, not errors: real manifests mix them in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
import yaml

from extender.core.sinks import RawObject
from extender.errors import ExtenderError

STDIN = "-"

WORKLOAD_KINDS = (
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
)
_REPLICATED_KINDS = frozenset({"Deployment", "StatefulSet", "ReplicaSet"})


class ManifestError(ExtenderError):
    """A manifest that cannot be read or has a workload of the wrong shape; names file and doc."""


@dataclass(frozen=True, slots=True)
class Workload:
    """One workload and the pod it would create."""

    kind: str
    namespace: str
    name: str
    source: str
    """Where it came from: `FILE, document N`."""
    raw_pod: RawObject
    """A Pod built from the pod template (for a Pod: the Pod itself)."""
    replicas: int | None
    """Pods at once (replicas, parallelism; 1 for a Pod); None for a DaemonSet: one per node."""
    raw_selector: Mapping[str, Any] | None
    """The workload's label selector, which finds its existing pods (None: match by name)."""

    @property
    def key(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Manifests:
    workloads: tuple[Workload, ...]
    skipped: tuple[str, ...]
    """`Kind namespace/name` of objects that create no pods."""


def read_manifests(paths: Sequence[str], stdin: IO[bytes], namespace: str = "default") -> Manifests:
    """Every workload in `paths` (`-` reads `stdin`); ManifestError names the file on failure.
    Objects without `metadata.namespace` go to `namespace`, as `kubectl apply -n` would."""
    workloads: list[Workload] = []
    skipped: list[str] = []
    for path in paths:
        data = _read(path, stdin)
        label = "stdin" if path == STDIN else path
        for number, raw in _documents(data, label):
            source = f"{label}, document {number}"
            workload = workload_of(raw, source, namespace)
            if workload is None:
                skipped.append(_describe(raw))
            else:
                workloads.append(workload)
    return Manifests(tuple(workloads), tuple(skipped))


def _read(path: str, stdin: IO[bytes]) -> bytes:
    if path == STDIN:
        return stdin.read()
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ManifestError(f"cannot read manifest {path}: {error.strerror or error}") from error


def _documents(data: bytes, label: str) -> Iterator[tuple[int, RawObject]]:
    try:
        documents: list[Any] = [orjson.loads(data)]
    except orjson.JSONDecodeError:
        try:
            documents = list(
                yaml.load_all(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            )
        except yaml.YAMLError as error:
            problem = str(error).replace("\n", " ")
            raise ManifestError(f"{label} is neither JSON nor YAML: {problem}") from error
    for number, document in enumerate(documents, start=1):
        for raw in _flatten(document, f"{label}, document {number}"):
            yield number, raw


def _flatten(document: object, where: str) -> Iterator[RawObject]:
    if document is None:
        return
    if isinstance(document, list):
        for item in document:
            yield from _flatten(item, where)
        return
    if not isinstance(document, dict):
        raise ManifestError(
            f"{where}: expected Kubernetes objects, found {type(document).__name__}"
        )
    items = document.get("items")
    if isinstance(items, list) and "spec" not in document:
        for item in items:
            yield from _flatten(item, where)
        return
    yield document


def workload_of(raw: RawObject, source: str, default_namespace: str = "default") -> Workload | None:
    """The workload in one object, or None for kinds that create no pods."""
    kind = raw.get("kind")
    if kind not in WORKLOAD_KINDS:
        return None
    metadata = _object(raw.get("metadata"), f"{source}: {kind} metadata")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{source}: {kind} without metadata.name")
    namespace = metadata.get("namespace") or default_namespace
    if not isinstance(namespace, str):
        raise ManifestError(f"{source}: {kind} {name}: metadata.namespace must be a string")
    where = f"{source}: {kind} {namespace}/{name}"
    spec = _object(raw.get("spec"), f"{where}: spec")
    selector: Mapping[str, Any] | None = None
    if kind == "Pod":
        template_metadata, pod_spec, replicas = metadata, spec, 1
    else:
        if kind == "CronJob":
            job_spec = _object(
                _object(spec.get("jobTemplate"), f"{where}: spec.jobTemplate").get("spec"),
                f"{where}: spec.jobTemplate.spec",
            )
            template_path = "spec.jobTemplate.spec.template"
        else:
            job_spec = spec
            template_path = "spec.template"
        template = _object(job_spec.get("template"), f"{where}: {template_path}")
        template_metadata = _object(template.get("metadata"), f"{where}: {template_path}.metadata")
        pod_spec = _object(template.get("spec"), f"{where}: {template_path}.spec")
        replicas = 1
        if kind in _REPLICATED_KINDS:
            replicas = _count(spec.get("replicas"), f"{where}: spec.replicas")
        elif kind in ("Job", "CronJob"):
            replicas = _count(job_spec.get("parallelism"), f"{where}: parallelism")
        if kind not in ("Job", "CronJob"):
            selector = _object(spec.get("selector"), f"{where}: spec.selector")
    if not isinstance(pod_spec.get("containers"), list):
        raise ManifestError(f"{where}: the pod spec has no containers list")
    raw_pod: RawObject = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"check:{kind}/{namespace}/{name}",
            "labels": template_metadata.get("labels") or {},
            "annotations": template_metadata.get("annotations") or {},
        },
        "spec": pod_spec,
        "status": {"phase": "Pending"},
    }
    return Workload(
        kind,
        namespace,
        name,
        source,
        raw_pod,
        None if kind == "DaemonSet" else replicas,
        selector,
    )


def _object(value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ManifestError(f"{where} must be an object, got {type(value).__name__}")
    return value


def _count(value: object, where: str) -> int:
    if value is None:
        return 1
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ManifestError(f"{where} must be a non-negative integer, got {value!r}")
    return value


def _describe(raw: RawObject) -> str:
    metadata = raw.get("metadata")
    name = namespace = ""
    if isinstance(metadata, Mapping):
        name = str(metadata.get("name") or "")
        namespace = str(metadata.get("namespace") or "")
    return (
        f"{raw.get('kind') or 'object without kind'} {namespace + '/' if namespace else ''}{name}"
    )
