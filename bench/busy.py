"""The busy-cluster benchmark: a serial scheduler's throughput while pod events stream in.

    .venv/bin/python -m bench.busy [--quick] [--sizes 300,1000,5000] [--pods-per-node 30]
        [--profile | --gc-pauses] [--without-scheduler-watch]

Five processes on loopback: the fake API server (bench/busy_api.py, a generated 5,000-node
cluster), our extender in live mode (`hostport-extender serve --kubeconfig ...`: real informers
list and watch the fake), the null extender (bench/null_extender.py), the scheduler's pod watch
(below), and this driver. The driver is the scheduler: for each pod, the pod is created
(ADDED), then filter over N node names, then prioritize over the names that passed, then the
pod is bound to one of them (the binding's MODIFIED, and 50 ms later the kubelet's status
MODIFIED). One pod in three asks a hostPort. Meanwhile kubelets update the status of other
pods, without host ports, at 200 events/s. Calls are serial, over one keep-alive connection,
as the scheduler makes them.

Rounds alternate between our extender and the null one. Our extender does not exist while the
null one is driven (the null extender has no informers), so the fake holds our watch's events
back then and delivers them before our next round; each round starts once our process is idle
again. The scheduler's own pod informer watches in both (a real kube-scheduler lists and watches
every pod whichever extender it calls): a fifth process, the bare watch client
(bench/bare_watch.py), watches the fake's pods from before the first round to the end, and the
fake, like the real API server's watch cache, encodes each event once for every watcher, so our
watch costs it the write. `--without-scheduler-watch` runs the rounds as before that (nobody
watches in the null's rounds, the fake streams to us alone), to compare the two harnesses.

Reported per size: filter and prioritize p50/p99 and the pods/s the serial driver achieved
(median of the rounds), ours beside null, and the CPU each extender's process spends per pod.
Then, with no calls, the CPU time our process spends per 1,000 watch events (from
/proc/PID/task/*/schedstat, the idle rate subtracted), for pods without host ports and for pods
with them.

The flat-out driver schedules 450-850 pods/s, 3-6x what a real kube-scheduler v1.36 did on this
machine (92-144 pods/s, issue 15), so every watch event lands on top of the next call. Paced
rounds also schedule at PACED_PODS_PER_S, the real scheduler's rate, and report what filter +
prioritize take per pod, ours beside null: at a fixed pace the throughput is the scheduler's,
and our cost is the time each of its cycles waits for us.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench import bodies, driver, report, servers
from bench.generate import node_name
from extender.heap import collector_paused

NODES = 5000
PODS_PER_NODE = 6
CHURN_PER_S = 200
HOSTPORT_EVERY = 3
HOSTPORT_BASE = 20000
HOSTPORT_SPREAD = 2000
STALL_AFTER_S = 6.0
"""How long the stall probes keep calling after their trigger."""
LOOKAHEAD = 4
"""Pods created before the scheduler gets to them (a controller creates them in bursts)."""


@dataclass(frozen=True, slots=True)
class BusyPlan:
    """How long everything runs."""

    sizes: tuple[int, ...]
    rounds: int
    round_s: float
    cpu_phase_s: float
    paced_sizes: tuple[int, ...] = (300, 1000)
    paced_rounds: int = 4
    paced_round_s: float = 4.0


QUICK = BusyPlan((300, 1000, 5000), 6, 2.5, 4.0)
FULL = BusyPlan((300, 1000, 5000), 8, 5.0, 8.0, paced_rounds=6, paced_round_s=8.0)

PACED_PODS_PER_S = 144.0
"""A real kube-scheduler v1.36 with no extender on this 2-core machine (issue 15's measurement:
300 nodes, 600 pods)."""
SCHEDULER_WITH_NULL_PODS_PER_S = 114.0
"""The same scheduler calling a do-nothing extender: the cycle our extra time per pod adds to."""


def cpu_seconds(pid: int) -> float:
    """CPU time of process `pid`, all its threads, in nanoseconds' resolution: the first field
    of each /proc/PID/task/TID/schedstat (time on a CPU, user and system).

    /proc/PID/stat's utime + stime count 10 ms clock ticks: a round of 1,000 watch events that
    costs 40 ms was read as 4 or 5 ticks, a 25 % step, which hid differences of a few us an
    event. (Threads that have exited are not counted; the processes measured here keep theirs.)
    """
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat", "rb") as stat:
            total += int(stat.read().split()[0])
    return total / 1e9


def wait_idle(
    pid: int, *, window_s: float = 0.3, busy_cpu_s: float = 0.03, limit_s: float = 60.0
) -> float:
    """Wait until `pid` spends less than `busy_cpu_s` of CPU in `window_s`; seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        before = cpu_seconds(pid)
        time.sleep(window_s)
        if cpu_seconds(pid) - before < busy_cpu_s:
            break
    return time.perf_counter() - started


class FakeApi:
    """The bench/busy_api.py process and its command pipe."""

    def __init__(
        self, kubeconfig: Path, log: Path, nodes: int, pods_per_node: int, seed: int
    ) -> None:
        self.log = log.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "bench.busy_api", f"--nodes={nodes}",
                f"--pods-per-node={pods_per_node}", f"--seed={seed}", f"--kubeconfig={kubeconfig}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=servers.REPO,
        )  # fmt: skip
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self._in, self._out = self.process.stdin, self.process.stdout
        banner = self._out.readline().decode()
        if not banner.startswith("ready "):
            self.close()
            raise servers.ServerError(f"the fake API server did not start (see {log})")
        self.banner = banner.strip()

    def send(self, line: bytes) -> None:
        self._in.write(line + b"\n")
        self._in.flush()

    def ask(self, line: str) -> dict[str, Any]:
        self.send(line.encode())
        answer = self._out.readline()
        if not answer.startswith(b"ok "):
            raise servers.ServerError(f"the fake API server answered {answer[:200]!r}")
        decoded: dict[str, Any] = orjson.loads(answer[3:])
        return decoded

    def close(self) -> None:
        with suppress(OSError):
            self._in.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@contextmanager
def fake_api(
    kubeconfig: Path, log: Path, seed: int, pods_per_node: int = PODS_PER_NODE
) -> Iterator[FakeApi]:
    fake = FakeApi(kubeconfig, log, NODES, pods_per_node, seed)
    try:
        yield fake
    finally:
        fake.close()


def wait_ready(server: servers.Server, limit_s: float = 600.0) -> float:
    """Seconds until GET /readyz answers 200 (live mode: both informers synced)."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
        try:
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return time.perf_counter() - started
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    raise servers.ServerError(f"{server.name} not ready after {limit_s:.0f} s")


class PodMaker:
    """The pods the driver schedules: captured pods renamed, one in three with a hostPort."""

    def __init__(self, templates: bodies.Templates, seed: int) -> None:
        self._hostport = templates.names_hostport["Pod"]
        self._plain = templates.names_plain["Pod"]
        self._seed = seed

    def pod(self, index: int) -> dict[str, Any]:
        hostport = index % HOSTPORT_EVERY == 0
        template = self._hostport if hostport else self._plain
        raw: dict[str, Any] = orjson.loads(orjson.dumps(template))
        metadata = raw["metadata"]
        metadata["name"] = f"busy-{index}"
        metadata["namespace"] = "busy"
        metadata["uid"] = str(uuid.uuid5(uuid.NAMESPACE_OID, f"busy:{self._seed}:{index}"))
        metadata.pop("resourceVersion", None)
        raw["spec"].pop("nodeName", None)
        raw["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        if hostport:
            port = HOSTPORT_BASE + (index // HOSTPORT_EVERY) % HOSTPORT_SPREAD
            raw["spec"]["containers"][0]["ports"][0]["hostPort"] = port
        return raw


@dataclass(slots=True)
class RoundResult:
    server: str
    pods: int
    wall_s: float
    filter_s: list[float] = field(default_factory=list)
    prioritize_s: list[float] = field(default_factory=list)
    calls_s: list[float] = field(default_factory=list)
    """Per scheduled pod: its filter and prioritize calls together."""
    unschedulable: int = 0
    cpu_s: float = 0.0
    """CPU of the extender driven in this round (ours or null)."""
    fake_cpu_s: float = 0.0
    watch_cpu_s: float = 0.0
    """CPU of the scheduler's stand-in pod watch (0 without one)."""
    events: int = 0

    @property
    def pods_per_s(self) -> float:
        return self.pods / self.wall_s if self.wall_s else 0.0


class Scheduler:
    """The serial driver: create, filter, prioritize, bind, one pod after another."""

    def __init__(self, fake: FakeApi, maker: PodMaker, seed: int) -> None:
        self._fake = fake
        self._maker = maker
        self._next = 0
        self._created = 0
        self._rng = random.Random(seed)

    def _create_up_to(self, index: int) -> None:
        while self._created <= index:
            self._fake.send(b"add " + orjson.dumps(self._maker.pod(self._created)))
            self._created += 1

    def run(
        self,
        client: driver.SerialClient,
        names_json: bytes,
        seconds: float,
        *,
        pods_per_s: float | None = None,
    ) -> RoundResult:
        """Schedule pods for `seconds`: one after another, or at `pods_per_s` (a pod waits
        for its slot, so a slow call delays only the pods behind it)."""
        result = RoundResult(client.server.name, 0, 0.0)
        clock = time.perf_counter
        with collector_paused():
            started = clock()
            scheduled = 0
            while clock() - started < seconds:
                if pods_per_s is not None:
                    time.sleep(max(0.0, started + scheduled / pods_per_s - clock()))
                    scheduled += 1
                index = self._next
                self._next += 1
                self._create_up_to(index + LOOKAHEAD)
                pod = orjson.dumps(self._maker.pod(index))
                head = b'{"Pod":' + pod + b',"Nodes":null,"NodeNames":'
                before = clock()
                answer = client.send(driver.Call("/filter", head + names_json + b"}"))
                result.filter_s.append(clock() - before)
                passed = orjson.loads(answer).get("NodeNames") or []
                if not passed:
                    result.unschedulable += 1
                    continue
                before = clock()
                client.send(driver.Call("/prioritize", head + orjson.dumps(passed) + b"}"))
                result.prioritize_s.append(clock() - before)
                result.calls_s.append(result.filter_s[-1] + result.prioritize_s[-1])
                node = passed[self._rng.randrange(len(passed))]
                self._fake.send(f"bind busy/busy-{index} {node}".encode())
                result.pods += 1
            result.wall_s = clock() - started
        return result


def _ms(values: list[float], p: float) -> float:
    return driver.percentile(values, p) * 1000.0 if values else 0.0


def busy_rounds(
    plan: BusyPlan,
    fake: FakeApi,
    ours: servers.Server,
    null: servers.Server,
    scheduler: Scheduler,
    *,
    paced: bool = False,
    watch_pid: int | None = None,
) -> list[dict[str, Any]]:
    """Alternating rounds per size; one line per (size, server) with medians over rounds.

    `paced`: the plan's paced rounds, at PACED_PODS_PER_S (lines of kind "busy-paced").
    `watch_pid`: the scheduler's stand-in pod watch, whose CPU is reported too."""
    sizes, round_count, round_s = (
        (plan.paced_sizes, plan.paced_rounds, plan.paced_round_s)
        if paced
        else (plan.sizes, plan.rounds, plan.round_s)
    )
    pace = PACED_PODS_PER_S if paced else None
    order = list(range(NODES))
    random.Random(1).shuffle(order)
    names = [node_name(index) for index in order]
    lines: list[dict[str, Any]] = []
    servers_by_name = {s.name: s for s in (ours, null)}
    clients = {name: driver.SerialClient(server) for name, server in servers_by_name.items()}
    fake.ask(f"churn {CHURN_PER_S} plain")
    try:
        for size in sizes:
            names_json = orjson.dumps(names[:size])
            results: dict[str, list[RoundResult]] = {"ours": [], "null": []}
            for round_index in range(round_count):
                pair = ("ours", "null") if round_index % 2 == 0 else ("null", "ours")
                for name in pair:
                    fake.ask("resume" if name == "ours" else "pause")
                    wait_idle(ours.process.pid)
                    events_before = fake.ask("stats")["events"]
                    driven = servers_by_name[name].process.pid
                    cpu_before = cpu_seconds(driven)
                    fake_before = cpu_seconds(fake.process.pid)
                    watch_before = cpu_seconds(watch_pid) if watch_pid else 0.0
                    got = scheduler.run(clients[name], names_json, round_s, pods_per_s=pace)
                    got.cpu_s = cpu_seconds(driven) - cpu_before
                    got.fake_cpu_s = cpu_seconds(fake.process.pid) - fake_before
                    if watch_pid:
                        got.watch_cpu_s = cpu_seconds(watch_pid) - watch_before
                    got.events = fake.ask("stats")["events"] - events_before
                    results[name].append(got)
            fake.ask("resume")
            for name, rounds in results.items():
                filters = [x for r in rounds for x in r.filter_s]
                prios = [x for r in rounds for x in r.prioritize_s]
                calls = [x for r in rounds for x in r.calls_s]
                line = {
                    "kind": "busy-paced" if paced else "busy",
                    "server": name,
                    "nodes": size,
                    "rounds": len(rounds),
                    "pods": sum(r.pods for r in rounds),
                    "pods_per_s": statistics.median(r.pods_per_s for r in rounds),
                    "pods_per_s_rounds": [round(r.pods_per_s, 1) for r in rounds],
                    "filter_p50_ms": _ms(filters, 50),
                    "filter_p99_ms": _ms(filters, 99),
                    "prioritize_p50_ms": _ms(prios, 50),
                    "prioritize_p99_ms": _ms(prios, 99),
                    "calls_p50_ms": _ms(calls, 50),
                    "calls_p99_ms": _ms(calls, 99),
                    "pace_pods_per_s": pace,
                    "scheduler_with_null_pods_per_s": SCHEDULER_WITH_NULL_PODS_PER_S,
                    "unschedulable": sum(r.unschedulable for r in rounds),
                    "events_per_s": statistics.median(r.events / r.wall_s for r in rounds),
                    "server_cpu_ms_per_pod": statistics.median(
                        1000 * r.cpu_s / max(1, r.pods) for r in rounds
                    ),
                    "fake_cpu_ms_per_pod": statistics.median(
                        1000 * r.fake_cpu_s / max(1, r.pods) for r in rounds
                    ),
                    "scheduler_watch": watch_pid is not None,
                    "watch_cpu_ms_per_pod": statistics.median(
                        1000 * r.watch_cpu_s / max(1, r.pods) for r in rounds
                    ),
                }
                lines.append(line)
            ours_line, null_line = lines[-2], lines[-1]
            if paced:
                print(
                    f"  paced {size:>5} names at {pace:.0f} pods/s: filter + prioritize per pod "
                    f"p50 ours {ours_line['calls_p50_ms']:.2f} null "
                    f"{null_line['calls_p50_ms']:.2f} ms, p99 ours "
                    f"{ours_line['calls_p99_ms']:.2f} null {null_line['calls_p99_ms']:.2f}; "
                    f"CPU ms/pod ours {ours_line['server_cpu_ms_per_pod']:.2f} null "
                    f"{null_line['server_cpu_ms_per_pod']:.2f}",
                    flush=True,
                )
                continue
            paired = report.paired_ratio(
                ours_line["pods_per_s_rounds"], null_line["pods_per_s_rounds"]
            )
            print(
                f"  busy {size:>5} names: pods/s ours {ours_line['pods_per_s']:7.0f} "
                f"null {null_line['pods_per_s']:7.0f} "
                f"({ours_line['pods_per_s'] / null_line['pods_per_s']:.2f}x, paired "
                f"{paired or 0.0:.2f}x); filter p99 "
                f"ours {ours_line['filter_p99_ms']:.2f} null {null_line['filter_p99_ms']:.2f} ms; "
                f"filter p50 ours {ours_line['filter_p50_ms']:.2f} null "
                f"{null_line['filter_p50_ms']:.2f}, prioritize p50 ours "
                f"{ours_line['prioritize_p50_ms']:.2f} null {null_line['prioritize_p50_ms']:.2f}; "
                f"CPU ms/pod ours {ours_line['server_cpu_ms_per_pod']:.2f} null "
                f"{null_line['server_cpu_ms_per_pod']:.2f}, fake "
                f"{ours_line['fake_cpu_ms_per_pod']:.2f} / {null_line['fake_cpu_ms_per_pod']:.2f}"
                + (
                    f", scheduler's watch {ours_line['watch_cpu_ms_per_pod']:.2f} / "
                    f"{null_line['watch_cpu_ms_per_pod']:.2f}"
                    if watch_pid
                    else ""
                ),
                flush=True,
            )
    finally:
        fake.ask("churn 0 plain")
        fake.ask("resume")
        for client in clients.values():
            client.close()
    return lines


@contextmanager
def bare_watcher(kubeconfig: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """bench/bare_watch.py watching the fake's pods, for the duration of the block."""
    with log.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_watch", f"--kubeconfig={kubeconfig}"],
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=servers.REPO,
        )
        try:
            assert process.stdout is not None
            if process.stdout.readline().strip() != b"watching":
                raise servers.ServerError(f"the bare watch client did not start (see {log})")
            yield process
        finally:
            servers.stop_process(process)


def _ms_per_1000(cpu_s: float, idle_cpu_s: float, events: int) -> float:
    """Milliseconds of CPU per 1,000 events, what the process spends idle taken off."""
    return 1e6 * max(0.0, cpu_s - idle_cpu_s) / events if events else 0.0


def cpu_per_event(
    plan: BusyPlan, fake: FakeApi, ours: servers.Server, bare_pid: int
) -> list[dict[str, Any]]:
    """Our CPU per 1,000 watch events with no calls, beside the bare watch client's in the same
    windows: idle rates first, then each kind of pod."""
    pid = ours.process.pid
    wait_idle(pid)
    before, bare_before = cpu_seconds(pid), cpu_seconds(bare_pid)
    time.sleep(plan.cpu_phase_s)
    idle_rate = (cpu_seconds(pid) - before) / plan.cpu_phase_s
    bare_idle_rate = (cpu_seconds(bare_pid) - bare_before) / plan.cpu_phase_s
    lines = []
    for kind, rate in (("plain", 1000), ("ports", 500), ("plain", 1000), ("ports", 500)):
        events_before = fake.ask("stats")["churned"]
        started = time.perf_counter()
        before, bare_before = cpu_seconds(pid), cpu_seconds(bare_pid)
        fake.ask(f"churn {rate} {kind}")
        time.sleep(plan.cpu_phase_s)
        fake.ask(f"churn 0 {kind}")
        time.sleep(0.5)  # the last events reach the extender
        cpu = cpu_seconds(pid) - before
        bare_cpu = cpu_seconds(bare_pid) - bare_before
        window = time.perf_counter() - started
        events = fake.ask("stats")["churned"] - events_before
        line = {
            "kind": "busy-cpu",
            "pods": kind,
            "rate": rate,
            "events": events,
            "cpu_s": cpu,
            "idle_cpu_s": idle_rate * window,
            "cpu_ms_per_1000": _ms_per_1000(cpu, idle_rate * window, events),
            "bare_cpu_s": bare_cpu,
            "bare_idle_cpu_s": bare_idle_rate * window,
            "bare_cpu_ms_per_1000": _ms_per_1000(bare_cpu, bare_idle_rate * window, events),
        }
        print(
            f"  watch events of pods {'without' if kind == 'plain' else 'with'} host ports: "
            f"{events} at {rate}/s, ours {line['cpu_ms_per_1000']:.1f} ms CPU per 1,000, "
            f"a bare watch client {line['bare_cpu_ms_per_1000']:.1f}",
            flush=True,
        )
        lines.append(line)
    # Two alternating rounds of each, on a shared machine: one line per kind, their CPU summed.
    merged = []
    for kind in ("plain", "ports"):
        mine = [line for line in lines if line["pods"] == kind]
        events = sum(line["events"] for line in mine)
        cpu = sum(line["cpu_s"] for line in mine)
        idle = sum(line["idle_cpu_s"] for line in mine)
        bare = sum(line["bare_cpu_s"] for line in mine)
        bare_idle = sum(line["bare_idle_cpu_s"] for line in mine)
        merged.append(
            mine[0]
            | {
                "events": events,
                "cpu_s": cpu,
                "idle_cpu_s": idle,
                "cpu_ms_per_1000": _ms_per_1000(cpu, idle, events),
                "rounds_ms_per_1000": [round(line["cpu_ms_per_1000"], 1) for line in mine],
                "bare_cpu_s": bare,
                "bare_idle_cpu_s": bare_idle,
                "bare_cpu_ms_per_1000": _ms_per_1000(bare, bare_idle, events),
            }
        )
    return merged


def stall_probes(
    fake: FakeApi, ours: servers.Server, maker: PodMaker, names_json: bytes
) -> list[dict[str, Any]]:
    """How long a filter call waits while a big watch burst, then a relist, is applied.

    Filter calls (a pod without host ports, serial) run for 1 s before the trigger and
    STALL_AFTER_S after it, long enough for a relist of the 5,000 nodes and 30,000 pods to be
    listed, applied and freed (3-4 s here); reported: the slowest call and p99 before, and the
    slowest call after.
    """
    pod = orjson.dumps(maker.pod(1))
    call = driver.Call(
        "/filter", b'{"Pod":' + pod + b',"Nodes":null,"NodeNames":' + names_json + b"}"
    )
    client = driver.SerialClient(ours)
    lines = []
    try:
        for what, command in (
            ("a burst of 5,000 watch events", "burst 5000"),
            ("a 410 relist", "expire"),
        ):
            wait_idle(ours.process.pid)
            clock = time.perf_counter
            before: list[float] = []
            after: list[float] = []
            with collector_paused():
                started = clock()
                triggered = False
                while clock() - started < 1.0 + STALL_AFTER_S:
                    if not triggered and clock() - started > 1.0:
                        fake.ask(command)
                        triggered = True
                    sent = clock()
                    client.send(call)
                    (after if triggered else before).append(clock() - sent)
            line = {
                "kind": "busy-stall",
                "what": what,
                "before_max_ms": max(before) * 1000,
                "before_p99_ms": _ms(before, 99),
                "after_max_ms": max(after) * 1000,
                "after_p99_ms": _ms(after, 99),
            }
            print(
                f"  filter while {what}: slowest {line['after_max_ms']:.1f} ms "
                f"(before it: slowest {line['before_max_ms']:.1f} ms, "
                f"p99 {line['before_p99_ms']:.1f})",
                flush=True,
            )
            lines.append(line)
        wait_ready(ours)
    finally:
        client.close()
    return lines


def run(
    plan: BusyPlan,
    templates: bodies.Templates,
    out: Path,
    *,
    seed: int = 1,
    profile: Path | None = None,
    gc_only: bool = False,
    pods_per_node: int = PODS_PER_NODE,
    scheduler_watch: bool = True,
) -> list[dict[str, Any]]:
    """The whole busy-cluster benchmark; its JSON lines.

    `scheduler_watch`: the scheduler's stand-in pod watch runs through the rounds (False: the
    harness before it, where nobody watches in the null extender's rounds)."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as directory:
        kubeconfig = Path(directory) / "kubeconfig"
        started = time.perf_counter()
        with fake_api(kubeconfig, logs / "busy-api.log", seed, pods_per_node) as fake:
            print(
                f"busy: fake API up in {time.perf_counter() - started:.0f} s: {fake.banner}",
                flush=True,
            )
            executable = Path(sys.executable).parent / "hostport-extender"
            ours_command = [
                str(executable), "serve", "--kubeconfig", str(kubeconfig),
                "--listen", "127.0.0.1:0",
            ]  # fmt: skip
            grace_s = servers.STOP_GRACE_S
            if profile is not None:
                grace_s = servers.PROFILED_STOP_GRACE_S
                ours_command = [
                    sys.executable, "-m", "bench.profile_server", "--kubeconfig", str(kubeconfig),
                    "--listen", "127.0.0.1:0", "--out", str(profile),
                    *(["--gc-only"] if gc_only else []),
                ]  # fmt: skip
            with (
                servers.running("null", servers.null_command(), logs) as null,
                servers.running("ours", ours_command, logs, stop_grace_s=grace_s) as ours,
            ):
                synced = wait_ready(ours)
                synced_rss, _peak = servers.memory_mb(ours)
                print(
                    f"busy: ours synced in {synced:.1f} s, {synced_rss:.0f} MB resident",
                    flush=True,
                )
                maker = PodMaker(templates, seed)
                scheduler = Scheduler(fake, maker, seed)

                def rounds(watch_pid: int | None) -> list[dict[str, Any]]:
                    return [
                        line
                        for paced in (False, True)
                        for line in busy_rounds(
                            plan, fake, ours, null, scheduler, paced=paced, watch_pid=watch_pid
                        )
                    ]

                # The bare watch client: the CPU phase's floor, then the scheduler's own pod
                # watch through the rounds of both extenders.
                with bare_watcher(kubeconfig, logs / "bare-watch.log") as bare:
                    lines = cpu_per_event(plan, fake, ours, bare.pid)
                    if scheduler_watch:
                        lines += rounds(bare.pid)
                if not scheduler_watch:
                    lines += rounds(None)
                names = orjson.dumps([node_name(index) for index in range(300)])
                lines += stall_probes(fake, ours, maker, names)
                rss, peak = servers.memory_mb(ours)
                for line in lines:
                    line["ours_rss_mb"], line["ours_peak_rss_mb"] = rss, peak
                    line["ours_sync_s"], line["ours_synced_rss_mb"] = synced, synced_rss
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.busy", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--sizes", default="", help="comma-separated node counts (default 300,1000,5000)"
    )
    parser.add_argument("--out", type=Path, default=servers.REPO / "bench" / "results")
    parser.add_argument("--payloads", type=Path, default=bodies.DEFAULT_PAYLOADS)
    parser.add_argument(
        "--profile", action="store_true", help="ours under pyinstrument: bench/results/profile/"
    )
    parser.add_argument(
        "--gc-pauses", action="store_true", help="only record ours' collector pauses, same place"
    )
    parser.add_argument(
        "--without-scheduler-watch",
        action="store_true",
        help="no stand-in for the scheduler's own pod watch in the rounds (the harness before "
        "it: nobody watches in the null extender's rounds)",
    )
    parser.add_argument(
        "--pods-per-node",
        type=int,
        default=PODS_PER_NODE,
        help=f"pods the fake generates per node, 5,000 nodes (default {PODS_PER_NODE}; 30 for "
        "~150,000 pods)",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.sizes:
        sizes = tuple(int(x) for x in args.sizes.split(","))
        plan = dataclasses.replace(
            plan, sizes=sizes, paced_sizes=tuple(x for x in plan.paced_sizes if x in sizes)
        )
    profile = args.out / "profile" / "busy-ours" if args.profile or args.gc_pauses else None
    lines = run(
        plan,
        bodies.load_templates(args.payloads),
        args.out,
        profile=profile,
        gc_only=args.gc_pauses,
        pods_per_node=args.pods_per_node,
        scheduler_watch=not args.without_scheduler_watch,
    )
    for line in lines:
        sys.stdout.buffer.write(orjson.dumps(line) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
