"""Who performs a binding: the API server in live mode, the in-memory cluster in snapshot mode."""

from __future__ import annotations

from typing import Protocol

from extender.core.cluster import Cluster


class Binder(Protocol):
    """Binds a pod to a node, or raises extender.errors.BindError with the reason to report."""

    async def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        """Create the binding; return only once it is accepted."""


class SnapshotBinder:
    """Snapshot mode: a binding updates the in-memory cluster and always succeeds."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    async def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        self._cluster.apply_binding(uid, node)
