"""Soak: live mode under watch churn and scheduler load for minutes; memory must stay flat.

    .venv/bin/python -m bench.soak [--minutes 10] [--quick] [--nodes 300] [--pods 6000]

The fake API server (tests/fakeapi.py, TLS) runs in this process and churns pods: adds (a third
with hostPorts), label updates, deletions, pods finishing (they leave the field selector), and
every `--fault-every` seconds a fault in turn: history compacted + watches expired (410 and a
relist), streams cut mid-line, watches hung up. The extender is a separate process (`serve
--kubeconfig`), so its resident memory is its own: sampled from /proc every 5 s. A serial
client calls filter then prioritize, as the scheduler does, with the captured hostPort and plain
pods over every node name. At the end: churn stops, tentative reservations expire, and every
node's claims as the extender serves them (/debug/nodes) must equal those of an index built from
a fresh list of the fake's objects; no request may have failed. Prints one summary; not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from bench.bodies import load_templates, names_body
from bench.live_sync import raw_pod
from extender.core.cluster import Cluster
from extender.kube.informer import PODS
from extender.settings import Settings
from extender.tools.who import who
from tests.fakeapi import FakeApiServer, Pki

REPO = Path(__file__).resolve().parents[1]
SAMPLE_EVERY = 5.0
IN_FLIGHT_TTL = 2.0
"""Short, so that the final comparison does not wait 15 s for the load's reservations."""


@dataclass
class Tally:
    """What the load and the churn did."""

    calls: int = 0
    failed: list[str] = field(default_factory=list)
    error_answers: int = 0
    error_texts: Counter[str] = field(default_factory=Counter)
    error_times: list[float] = field(default_factory=list)
    filter_ms: list[float] = field(default_factory=list)
    events: int = 0
    faults: list[str] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else 0.0


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 2:
        return 0.0
    xs, ys = [s[0] for s in samples], [s[1] for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


class Churn:
    """Writes to the fake like a busy cluster's controllers and kubelets."""

    def __init__(self, fake: FakeApiServer, nodes: int, pods: int, seed: int) -> None:
        self.fake = fake
        self.nodes = nodes
        self.target = pods
        self.random = random.Random(seed)
        self.next_index = pods
        self.live: list[int] = list(range(pods))

    def step(self) -> None:
        """One write: 60 % a pod comes or goes (the count stays near the target), 40 % an update."""
        roll = self.random.random()
        if roll < 0.6 and len(self.live) <= self.target:
            index = self.next_index
            self.next_index += 1
            self.fake.put("pods", raw_pod(index, self.nodes))
            self.live.append(index)
            return
        position = self.random.randrange(len(self.live))
        index = self.live[position]
        key = f"ns-{index % 50}/pod-{index}"
        if roll < 0.6:
            self.live[position] = self.live[-1]
            self.live.pop()
            if self.random.random() < 0.3:  # the pod finishes: leaves the field selector
                self.fake.put("pods", raw_pod(index, self.nodes, phase="Succeeded"))
            else:
                self.fake.remove("pods", key)
            return
        current = self.fake.get("pods", key)
        current["metadata"]["labels"] = {"app": "x", "rev": str(self.random.randrange(10**6))}
        self.fake.put("pods", current)


async def churn_forever(churn: Churn, rate: float, fault_every: float, tally: Tally) -> None:
    faults = ("410 relist", "streams cut mid-line", "watches hung up")
    next_fault = time.monotonic() + fault_every
    interval = 0.05
    per_tick = max(1, round(rate * interval))
    while True:
        for _ in range(per_tick):
            churn.step()
            tally.events += 1
        if time.monotonic() >= next_fault:
            fault = faults[len(tally.faults) % len(faults)]
            if fault == "410 relist":
                churn.fake.compact()
                churn.fake.expire_watches()
            elif fault == "streams cut mid-line":
                churn.fake.break_streams(partial_line=b'{"type":"MODIFIED","object":{"kind')
            else:
                churn.fake.hang_up_watches(2)
            tally.faults.append(fault)
            next_fault += fault_every
        await asyncio.sleep(interval)


async def load_forever(base: str, bodies: list[bytes], tally: Tally) -> None:
    async with aiohttp.ClientSession() as session:
        while True:
            for body in bodies:
                for verb in ("filter", "prioritize"):
                    started = time.perf_counter()
                    try:
                        async with session.post(
                            f"{base}/{verb}",
                            data=body,
                            headers={"Content-Type": "application/json"},
                        ) as response:
                            answer = await response.read()
                            status = response.status
                    except (aiohttp.ClientError, TimeoutError) as error:
                        tally.failed.append(f"{verb}: {type(error).__name__}: {error}")
                        continue
                    tally.calls += 1
                    if verb == "filter":
                        tally.filter_ms.append((time.perf_counter() - started) * 1000)
                    if status != 200:
                        tally.failed.append(f"{verb}: HTTP {status}: {answer[:200]!r}")
                    elif verb == "filter" and (told := orjson.loads(answer).get("Error")):
                        tally.error_answers += 1
                        tally.error_texts[re.sub(r"\d+(\.\d+)?", "N", told)[:160]] += 1
                        tally.error_times.append(time.monotonic())
                await asyncio.sleep(0.005)


async def sample_forever(pid: int, started: float, tally: Tally) -> None:
    while True:
        tally.rss.append((time.monotonic() - started, rss_mb(pid)))
        await asyncio.sleep(SAMPLE_EVERY)


def fresh_claims(fake: FakeApiServer, names: list[str]) -> dict[str, Any]:
    truth = Cluster(Settings())
    truth.nodes.replace(list(fake.truth("nodes").values()))
    truth.pods.replace(list(fake.truth("pods", PODS.field_selector).values()))
    return {name: who(truth, name).as_json() for name in names}


async def served_claims(base: str, names: list[str]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        claims = {}
        for name in names:
            async with session.get(f"{base}/debug/nodes/{name}") as response:
                claims[name] = orjson.loads(await response.read())
        return claims


def start_extender(kubeconfig: Path, directory: Path) -> tuple[subprocess.Popen[str], str]:
    config = directory / "settings.yaml"
    config.write_text(yaml.safe_dump({"in_flight_ttl_seconds": IN_FLIGHT_TTL}))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "extender",
            "serve",
            "--kubeconfig",
            str(kubeconfig),
            "--listen",
            "127.0.0.1:0",
            "--config",
            str(config),
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    banner = process.stdout.readline()
    match = re.search(r"on (http://127\.0\.0\.1:\d+)", banner)
    if match is None:
        process.kill()
        raise SystemExit(f"serve failed: {banner!r} {process.communicate()[1][-2000:]}")
    return process, match.group(1)


async def wait_ready(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            try:
                async with session.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("the extender never became ready")


async def soak(args: argparse.Namespace) -> int:
    tally = Tally()
    templates = load_templates()
    names = [f"node-{n}" for n in range(args.nodes)]
    bodies = [names_body(templates.names_hostport, names), names_body(templates.names_plain, names)]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        fake = FakeApiServer(token="t", pki=Pki.create(directory), history_limit=5000)
        for name in names:
            fake.put("nodes", {"metadata": {"name": name}})
        for index in range(args.pods):
            fake.put("pods", raw_pod(index, args.nodes))
        await fake.start()
        kubeconfig = fake.write_kubeconfig(directory / "kubeconfig", token="t")
        process, base = await asyncio.to_thread(start_extender, kubeconfig, directory)
        try:
            await wait_ready(base)
            started = time.monotonic()
            churn = Churn(fake, args.nodes, args.pods, args.seed)
            tasks = [
                asyncio.create_task(churn_forever(churn, args.rate, args.fault_every, tally)),
                asyncio.create_task(load_forever(base, bodies, tally)),
                asyncio.create_task(sample_forever(process.pid, started, tally)),
            ]
            await asyncio.sleep(args.minutes * 60)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            soaked = time.monotonic() - started
            await asyncio.sleep(IN_FLIGHT_TTL + 1.5)  # reservations expire (swept every 1 s)
            expected = fresh_claims(fake, names)
            same, waited = False, 0.0
            while not same and waited < 60:
                same = await served_claims(base, names) == expected
                if not same:
                    await asyncio.sleep(1)
                    waited += 1
            end_rss = rss_mb(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            _, err = await asyncio.to_thread(process.communicate, timeout=30)
            await fake.stop()
    settled = [s for s in tally.rss if s[0] >= soaked * 0.2]  # after warm-up
    claims = sum(len(view["claims"]) for view in expected.values())
    p50 = statistics.median(tally.filter_ms) if tally.filter_ms else 0.0
    p99 = statistics.quantiles(tally.filter_ms, n=100)[98] if len(tally.filter_ms) > 100 else p50
    print(
        f"soak {soaked / 60:.1f} min, {args.nodes} nodes, {args.pods} pods: "
        f"{tally.events:,} pod writes ({tally.events / soaked:.0f}/s), faults "
        f"{len(tally.faults)} ({', '.join(sorted(set(tally.faults)))})\n"
        f"load: {tally.calls:,} calls (filter p50 {p50:.2f} ms, p99 {p99:.2f} ms), "
        f"failed {len(tally.failed)}, filter answers with an Error {tally.error_answers}\n"
        f"RSS: start {tally.rss[0][1]:.0f} MB, end {end_rss:.0f} MB, max "
        f"{max(s[1] for s in tally.rss):.0f} MB; slope {slope_mb_per_min(tally.rss):+.2f} MB/min "
        f"overall, {slope_mb_per_min(settled):+.2f} MB/min after the first 20 %\n"
        f"index equals a fresh list: {same} ({claims:,} claims on {len(names)} nodes compared, "
        f"after {waited:.0f} s of settling)"
    )
    for failure in tally.failed[:10]:
        print(f"  failed: {failure}")
    if tally.error_times:
        first, last = tally.error_times[0] - started, tally.error_times[-1] - started
        print(f"  Error answers between {first:.0f} s and {last:.0f} s of the run:")
        for text, count in tally.error_texts.most_common(5):
            print(f"    {count} x {text}")
    errors = [line for line in err.splitlines() if "Traceback" in line or " ERROR " in line]
    if errors:
        print(f"  extender stderr: {len(errors)} error lines, first: {errors[0]}")
    return 0 if same and not tally.failed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="one minute")
    parser.add_argument("--nodes", type=int, default=300)
    parser.add_argument("--pods", type=int, default=6000)
    parser.add_argument("--rate", type=float, default=100.0, help="pod writes per second")
    parser.add_argument("--fault-every", type=float, default=20.0, metavar="SECONDS")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes = 1.0
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
