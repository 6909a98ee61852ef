"""Where the tools get the cluster from: kubectl dumps (`--snapshot`) or a live API server.

The only I/O of the tools besides printing. Everything is read once, up front; the views are
computed over the resulting `Cluster` and the raw Node objects (labels and taints, which the
Cluster does not keep).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from extender.core.cluster import Cluster
from extender.core.pods import TERMINAL_PHASES, PodPorts, decode_pod
from extender.core.sinks import RawObject
from extender.errors import ExtenderError
from extender.kube.snapshot import SnapshotObjects, load_objects
from extender.settings import Settings

if TYPE_CHECKING:
    from extender.kube.kubeapi import KubeApi
    from extender.kube.kubeauth import Connection


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """The options every tool shares: where the cluster comes from, and the settings file."""
    group = parser.add_argument_group("cluster")
    group.add_argument(
        "--snapshot",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="read Nodes and Pods from `kubectl get nodes,pods -A -o yaml|json` dumps",
    )
    group.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig for a live cluster")
    group.add_argument("--context", metavar="NAME", help="kubeconfig context to use")
    group.add_argument(
        "--config", type=Path, metavar="FILE", help="the extender's YAML settings file"
    )
    group.add_argument(
        "--cluster-reserved-ports",
        metavar="SPECS",
        help="ports held by host daemons on every node, e.g. '10250,22'",
    )


@dataclass(frozen=True, slots=True)
class Loaded:
    """The cluster as the tools see it."""

    cluster: Cluster
    raw_nodes: list[RawObject]
    raw_pods: list[RawObject]
    finished: tuple[PodPorts, ...]
    """Finished (Succeeded/Failed) pods decoded as if running: what they held before."""


def load(args: argparse.Namespace) -> Loaded:
    """Read the objects named by the options and build the cluster state from them."""
    settings = Settings.from_sources(
        args.config, {"cluster_reserved_ports": args.cluster_reserved_ports}
    )
    return build(settings, list_objects(args))


def list_objects(args: argparse.Namespace) -> SnapshotObjects:
    """Nodes and Pods from the snapshot files, or listed from the live cluster."""
    if args.snapshot:
        if args.kubeconfig or args.context:
            raise ExtenderError("--kubeconfig and --context are for live mode: drop --snapshot")
        return load_objects(args.snapshot)
    # Imported here: the official client is slow to import and snapshot runs never need it.
    from extender.kube.kubeauth import load_connection  # noqa: PLC0415

    connection = load_connection(args.kubeconfig, args.context)
    return asyncio.run(list_live(connection))


LIST_ATTEMPTS = 3
"""A list whose continue token expires (410) is restarted, as its pages would not be one
snapshot; a cluster churning that fast for three whole lists is reported instead."""


async def list_live(connection: Connection) -> SnapshotObjects:
    """Every Node and every Pod (finished ones too: they are the audit's history), listed once.

    Pods are listed with no field selector, unlike the informer's, so that evicted pods show
    where a UDP port changed owner.
    """
    from extender.kube.kubeapi import KubeApi, KubeApiError  # noqa: PLC0415 (see list_objects)

    try:
        async with KubeApi(connection, component="tools") as api:
            nodes = await _list(api, "/api/v1/nodes")
            pods = await _list(api, "/api/v1/pods")
    except KubeApiError as error:
        raise ExtenderError(f"cannot list the cluster at {connection.server}: {error}") from error
    return SnapshotObjects(nodes, pods)


async def _list(api: KubeApi, path: str) -> list[RawObject]:
    from extender.kube.kubeapi import ApiStatusError  # noqa: PLC0415 (see list_objects)

    attempt = 1
    while True:
        try:
            items, _version = await api.list_all(path)
        except ApiStatusError as error:
            if not error.gone or attempt >= LIST_ATTEMPTS:
                raise
            attempt += 1
        else:
            return items


def build(settings: Settings, objects: SnapshotObjects) -> Loaded:
    cluster = Cluster(settings)
    cluster.nodes.replace(objects.nodes)
    cluster.pods.replace(objects.pods)
    finished = tuple(
        decode_pod(_as_running(raw)) for raw in objects.pods if _phase(raw) in TERMINAL_PHASES
    )
    return Loaded(cluster, objects.nodes, objects.pods, finished)


def _phase(raw: RawObject) -> object:
    status = raw.get("status")
    return status.get("phase") if isinstance(status, Mapping) else None


def _as_running(raw: RawObject) -> dict[str, Any]:
    status = raw.get("status")
    return {
        **raw,
        "status": {**(status if isinstance(status, Mapping) else {}), "phase": "Running"},
    }
