"""What tests and benches compare a live extender with: the cluster a brand-new extender would
build from the fake API server's truth right now, and a backoff sleep they can speed up."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from extender.core.cluster import Cluster
from extender.kube.informer import PODS
from extender.kube.snapshot import load_objects
from extender.settings import Settings
from tests.fakeapi import FakeApiServer, Pki


def fresh_cluster(fake: FakeApiServer, settings: Settings | None = None) -> Cluster:
    """The cluster a new extender would build from a consistent list of `fake` now."""
    fresh = Cluster(settings or Settings())
    fresh.nodes.replace(list(fake.truth("nodes").values()))
    fresh.pods.replace(list(fake.truth("pods", PODS.field_selector).values()))
    return fresh


def matches_truth(cluster: Cluster, fake: FakeApiServer, settings: Settings | None = None) -> bool:
    """`cluster`'s index equals the one a new extender would build from `fake` now."""
    return cluster.index.fingerprint() == fresh_cluster(fake, settings).index.fingerprint()


@dataclass
class Sleeper:
    """The informers' backoff sleep: real, or cut to 10 ms while `fast` (to pile up backoff)."""

    fast: bool = False
    delays: list[float] = field(default_factory=list)

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0.01 if self.fast else delay)


SAMPLE_CLUSTER = Path(__file__).resolve().parent.parent / "config" / "samples" / "cluster.yaml"
"""The bundled sample cluster (`make run` serves it)."""


def sample_api_server(pki_dir: Path, token: str) -> FakeApiServer:
    """A fake API server over TLS holding the sample cluster's nodes and pods (not started)."""
    fake = FakeApiServer(token=token, pki=Pki.create(pki_dir))
    objects = load_objects([SAMPLE_CLUSTER])
    for raw in objects.nodes:
        fake.put("nodes", raw)
    for raw in objects.pods:
        fake.put("pods", raw)
    return fake
