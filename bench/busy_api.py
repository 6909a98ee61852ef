"""The busy cluster's API server: tests/fakeapi.py in a process of its own, driven over stdin.

`python -m bench.busy_api --nodes N --pods-per-node M --kubeconfig FILE` serves a generated
cluster (bench/generate.py) on 127.0.0.1 over plain HTTP, writes a kubeconfig for it and prints
`ready URL`. It runs apart from the benchmark's driver (which blocks in serial HTTP calls) and
from the extender (whose CPU time is read from /proc), so each process's figures are its own.

Objects are stored in the field order the real API server writes (Go struct order: kind,
apiVersion, metadata with name, namespace, uid, resourceVersion first), so watch lines look like
a kube-apiserver's and not like `kubectl -o json`'s alphabetical output.

Commands, one per line on stdin; those marked * answer one line `ok {json}` on stdout:

    add {pod json}          a controller creates a pod (the watch sends ADDED)
    bind NS/NAME NODE       the binding (MODIFIED with spec.nodeName), then 50 ms later the
                            kubelet's status update (MODIFIED, Running)
    churn RATE KIND       * status updates of existing pods at RATE events/s, round robin over
                            the pods without host ports (KIND plain) or with them (ports);
                            RATE 0 stops
    pause                 * hold watch events back from our extender (User-Agent
                            hostport-extender/...: it does not exist in the null's rounds);
                            other watchers, the scheduler's stand-in, keep receiving them
    resume                * deliver the held events to our extender, in order
    burst COUNT           * COUNT status updates of pods with host ports at once (one chunk)
    expire                * forget the history and end every watch with 410: a full relist
    stats                 * {"events": pod changes made so far, "churned": status updates}
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.generate import ClusterSpec, RawObject, generate_node, generate_pods_for_node
from extender.core.pods import may_hold_ports
from extender.heap import freeze_heap
from extender.kube.kubeapi import USER_AGENT as OUR_USER_AGENT
from tests.fakeapi import FakeApiServer

TOKEN = "busy-bench"
TICK_SECONDS = 0.01
STATUS_DELAY_SECONDS = 0.05
"""From the binding to the kubelet's first status update (the real one is slower: no matter)."""

_METADATA_ORDER = (
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
)


def go_order(raw: RawObject, kind: str) -> RawObject:
    """`raw` with its keys in the order the API server encodes them (uid and RV slots kept)."""
    metadata = dict(raw.get("metadata") or {})
    if not metadata.get("uid"):
        metadata["uid"] = str(uuid.uuid4())
    metadata["resourceVersion"] = ""  # a slot: the fake fills it in place
    ordered_meta = {key: metadata[key] for key in _METADATA_ORDER if key in metadata}
    ordered_meta |= {key: value for key, value in metadata.items() if key not in ordered_meta}
    out: RawObject = {"kind": kind, "apiVersion": "v1", "metadata": ordered_meta}
    out |= {
        key: value for key, value in raw.items() if key not in ("kind", "apiVersion", "metadata")
    }
    return out


class BusyApi:
    """The fake API server plus the pod traffic a scheduler and kubelets cause."""

    def __init__(self, fake: FakeApiServer) -> None:
        self.fake = fake
        self.pools: dict[str, list[str]] = {"plain": [], "ports": []}
        self._cursor = {"plain": 0, "ports": 0}
        self._rate = 0.0
        self._kind = "plain"
        self._owed = 0.0
        self.churned = 0
        self.events = 0
        self._ticker: asyncio.Task[None] | None = None

    def load(self, spec: ClusterSpec) -> None:
        """Nodes and their pods, as a running cluster has them before the benchmark starts."""
        for index in range(spec.nodes):
            self.fake.put("nodes", go_order(generate_node(spec, index), "Node"))
            for raw in generate_pods_for_node(spec, index):
                if (raw.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                stored = self.fake.put("pods", go_order(raw, "Pod"))
                key = f"{stored['metadata']['namespace']}/{stored['metadata']['name']}"
                self.pools["ports" if may_hold_ports(stored) else "plain"].append(key)

    def add(self, raw: RawObject) -> None:
        self.fake.put("pods", go_order(raw, "Pod"))
        self.events += 1

    def bind(self, key: str, node: str) -> None:
        stored = self.fake.objects["pods"].get(key)
        if stored is None:
            return
        bound = dict(stored, spec=dict(stored["spec"], nodeName=node))
        self.fake.put("pods", bound)
        self.events += 1
        asyncio.get_running_loop().call_later(STATUS_DELAY_SECONDS, self._started, key)

    def _started(self, key: str) -> None:
        stored = self.fake.objects["pods"].get(key)
        if stored is None:
            return
        status = dict(
            stored.get("status") or {},
            phase="Running",
            hostIP="10.0.0.1",
            podIP=f"100.96.{self.events // 250 % 250}.{self.events % 250 + 2}",
            conditions=[
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()},
                {"type": "Ready", "status": "True", "lastTransitionTime": _now()},
            ],
        )
        self.fake.put("pods", dict(stored, status=status))
        self.events += 1

    def churn(self, rate: float, kind: str) -> None:
        self._rate, self._kind, self._owed = rate, kind, 0.0
        if rate > 0 and self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while self._rate > 0:
            await asyncio.sleep(TICK_SECONDS)
            now = loop.time()
            self._owed += self._rate * (now - last)
            last = now
            while self._owed >= 1:
                self._owed -= 1
                self._status_update(self._kind)
        self._ticker = None

    def _status_update(self, kind: str) -> None:
        """A kubelet's status write: a condition's time changes, nothing about ports."""
        pool = self.pools[kind]
        if not pool:
            return
        key = pool[self._cursor[kind] % len(pool)]
        self._cursor[kind] += 1
        stored = self.fake.objects["pods"].get(key)
        if stored is None:
            return
        status = dict(stored.get("status") or {})
        status["conditions"] = [
            {
                "type": "Ready",
                "status": "True",
                "lastProbeTime": _now(),
                "lastTransitionTime": _now(),
            }
        ]
        self.fake.put("pods", dict(stored, status=status))
        self.churned += 1
        self.events += 1

    def command(self, line: str) -> dict[str, Any] | None:
        """Run one command line; the answer to print, for the commands that have one."""
        verb, _, rest = line.partition(" ")
        if verb == "add":
            self.add(orjson.loads(rest))
            return None
        if verb == "bind":
            key, node = rest.split()
            self.bind(key, node)
            return None
        if verb == "churn":
            rate, kind = rest.split()
            self.churn(float(rate), kind)
            return {"pool": len(self.pools[kind])}
        if verb == "pause":
            self.fake.pause_watches(OUR_USER_AGENT)
            return {}
        if verb == "resume":
            self.fake.resume_watches()
            return {"rv": self.fake.rv}
        if verb == "burst":
            for _ in range(int(rest)):
                self._status_update("ports")
            return {"rv": self.fake.rv}
        if verb == "expire":
            self.fake.compact()
            self.fake.expire_watches()  # ERROR 410 on the open watches: the informers relist
            return {"rv": self.fake.rv}
        if verb == "stats":
            return {"events": self.events, "churned": self.churned, "rv": self.fake.rv}
        raise ValueError(f"unknown command {verb!r}")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def serve(spec: ClusterSpec, kubeconfig: Path) -> None:
    fake = FakeApiServer(token=TOKEN, history_limit=1_000_000)
    busy = BusyApi(fake)
    busy.load(spec)
    # The stand-in for a Go API server must not stop the world. Its history keeps every change
    # (up to 10^6), so full collections scanned a heap growing by ~250,000 objects a second and
    # paused this process for 300-830 ms; the driver's pipe to it filled, the driver blocked,
    # and a round of either extender dropped to a third of its pods/s. It makes next to no
    # cyclic garbage, so it runs without the collector.
    freeze_heap()
    gc.disable()
    await fake.start()
    fake.write_kubeconfig(kubeconfig, token=TOKEN)
    out = sys.stdout
    out.write(
        f"ready {fake.url} nodes {spec.nodes} pods {len(fake.objects['pods'])} "
        f"plain {len(busy.pools['plain'])} ports {len(busy.pools['ports'])}\n"
    )
    out.flush()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            answer = busy.command(line.decode().strip())
            if answer is not None:
                out.write("ok " + orjson.dumps(answer).decode() + "\n")
                out.flush()
    finally:
        busy.churn(0, "plain")
        await fake.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.busy_api", description=__doc__)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods-per-node", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(ClusterSpec(args.nodes, args.pods_per_node, args.seed), args.kubeconfig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
