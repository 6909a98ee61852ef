"""`python -m bench.run [--quick]`: the whole benchmark, ours against the null extender.

1. generate (or reuse) the server's synthetic cluster snapshot;
2. start our server and the null extender as separate processes on loopback;
3. drive both with the same pre-encoded bodies, in alternating rounds, serial then concurrent;
4. measure ingest and memory in a subprocess;
5. the busy cluster (bench/busy.py): ours in live mode against a fake API server streaming pod
   events, driven like a serial scheduler, beside the null extender;
6. write bench/results/results.jsonl (appended), report.md and filter-latency.png, and copy the
   table and the plot to docs/bench/ for the README.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import bodies, busy, driver, report, servers
from bench.generate import ClusterSpec, ensure_snapshot, generate_node, node_name

SERVE_NODES = 5000
INGEST_NODES = 5000
INGEST_PODS_PER_NODE = 30


@dataclass(frozen=True, slots=True)
class Plan:
    """How much of everything a mode does."""

    mode: str
    serve_pods_per_node: int
    sizes: tuple[int, ...]
    names_calls: int
    full_nodes_sizes: tuple[int, ...]
    full_nodes_calls: int
    other_calls: int
    concurrency: tuple[int, ...]
    concurrent_calls: int
    rounds: int
    events: int


QUICK = Plan(
    "quick", 10, (100, 500, 1000, 2000, 5000), 1000, (1000,), 16, 500, (4,), 600, 10, 50_000
)
FULL = Plan(
    "full", 30, (100, 500, 1000, 2000, 3000, 5000), 3000, (100, 1000, 2000), 60, 2000, (4, 16),
    3000, 20, 200_000,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Scenario:
    """One call to measure: what it is, and the body to send."""

    name: str
    nodes: int
    call: driver.Call
    settle: driver.Call | None = None
    """A bind for the scenario's pod, sent untimed afterwards (see `_settle_body`)."""


def _settle_body(templates: bodies.Templates, request: dict[str, Any], node: str) -> bytes:
    """Bind the pod, as the scheduler does after filtering it.

    Our server keeps a filtered pod with host ports "in flight" (its ports tentatively held on
    every node it passed) until it binds; a different pod wanting the same port then waits up to
    `in_flight_wait_seconds` for it. The captures hold two such pods (ncc-true and ncc-false
    `hostport`, same port, different UIDs), so each scenario binds its pod before the next one.
    """
    metadata = request["Pod"]["metadata"]
    return bodies.bind_body(
        templates.bind, metadata["name"], metadata["namespace"], metadata["uid"], node
    )


def rejected_everywhere(request: dict[str, Any]) -> dict[str, Any]:
    """The captured pod as a second statsd agent: hostNetwork, 8125/UDP, which every generated
    node's datadog agent holds. Every node rejects it: the path a stuck DaemonSet rollout (or a
    pinned pod that cannot fit) pays on each of the scheduler's retries."""
    pod = orjson.loads(orjson.dumps(request["Pod"]))
    pod["metadata"]["name"] = "statsd-agent"
    pod["spec"]["hostNetwork"] = True
    pod["spec"]["containers"][0]["ports"] = [
        {"name": "dogstatsd", "containerPort": 8125, "hostPort": 8125, "protocol": "UDP"}
    ]
    return {"Pod": pod}


def scenarios(plan: Plan, spec: ClusterSpec, templates: bodies.Templates) -> list[Scenario]:
    """Every serial scenario of `plan`, bodies built once up front."""
    order = list(range(spec.nodes))
    # The scheduler walks nodes zone by zone, not by name: any fixed shuffle stands in for it.
    random.Random(spec.seed).shuffle(order)
    names = [node_name(index) for index in order]
    found: list[Scenario] = []
    for size in plan.sizes:
        for pod, template in (
            ("hostport", templates.names_hostport),
            ("plain", templates.names_plain),
        ):
            body = bodies.names_body(template, names[:size])
            settle = driver.Call("/bind", _settle_body(templates, template, names[0]))
            found.append(
                Scenario(f"filter-names-{pod}", size, driver.Call("/filter", body), settle)
            )
    for size in plan.full_nodes_sizes:
        raw_nodes = [generate_node(spec, index) for index in order[:size]]
        body = bodies.nodes_body(templates.nodes_hostport, raw_nodes, templates.node_managed_fields)
        settle = driver.Call("/bind", _settle_body(templates, templates.nodes_hostport, names[0]))
        found.append(Scenario("filter-nodes-hostport", size, driver.Call("/filter", body), settle))
    biggest = max(plan.sizes)
    body = bodies.names_body(rejected_everywhere(templates.names_hostport), names[:biggest])
    found.append(Scenario("filter-names-rejected", biggest, driver.Call("/filter", body)))
    body = bodies.names_body(templates.names_hostport, names[:biggest])
    found.append(Scenario("prioritize-names-hostport", biggest, driver.Call("/prioritize", body)))
    bind = templates.bind
    body = bodies.bind_body(bind, bind["PodName"], bind["PodNamespace"], bind["PodUID"], names[0])
    found.append(Scenario("bind", 1, driver.Call("/bind", body)))
    return found


@dataclass(frozen=True, slots=True)
class Measured:
    """One scenario's timings on one server at one concurrency."""

    scenario: Scenario
    server: str
    concurrency: int
    timings: driver.Timings
    answer: dict[str, Any]


def _line(context: dict[str, Any], measured: Measured) -> report.Line:
    scenario, server, timings = measured.scenario, measured.server, measured.timings
    if not timings.latencies_s:
        raise driver.CallError(f"{server} answered no {scenario.name} call: {timings.last_error}")
    return {
        "run": context["run"],
        "mode": context["mode"],
        "kind": "http",
        "scenario": scenario.name,
        "nodes": scenario.nodes,
        "concurrency": measured.concurrency,
        "server": server,
        "calls": len(timings.latencies_s),
        "errors": timings.errors,
        "last_error": timings.last_error,
        "body_bytes": len(scenario.call.body),
        "p50_ms": timings.percentile_ms(50),
        "p90_ms": timings.percentile_ms(90),
        "p99_ms": timings.percentile_ms(99),
        "calls_per_s": timings.calls_per_s,
        "answer": measured.answer,
    }


def drive(
    plan: Plan, found: Sequence[Scenario], ours: servers.Server, null: servers.Server
) -> list[Measured]:
    """Measure every scenario on both servers; serial first, then the concurrent ones."""
    results: list[Measured] = []
    clients = [driver.SerialClient(null), driver.SerialClient(ours)]
    try:
        for scenario in found:
            answers = {
                client.server.name: driver.describe_answer(
                    scenario.call.path, client.send(scenario.call)
                )
                for client in clients
            }
            if scenario.name.startswith("filter-nodes"):
                count = plan.full_nodes_calls
            elif scenario.name.startswith("filter-names"):
                count = plan.names_calls
            else:
                count = plan.other_calls
            warmup = max(2, count // 20)
            timings = driver.measure_serial(clients, scenario.call, count, plan.rounds, warmup)
            for name, measured in timings.items():
                results.append(Measured(scenario, name, 1, measured, answers[name]))
            if scenario.settle is not None:
                for client in clients:
                    client.send(scenario.settle)
            ours_p50 = timings[ours.name].percentile_ms(50)
            null_p50 = timings[null.name].percentile_ms(50)
            print(
                f"  {scenario.name:<26} {scenario.nodes:>5} nodes: ours p50 {ours_p50:8.2f} ms,"
                f" null p50 {null_p50:8.2f} ms, ratio {ours_p50 / null_p50:5.2f}",
                flush=True,
            )
    finally:
        for client in clients:
            client.close()
    concurrent = [s for s in found if s.name == "filter-names-hostport" and s.nodes == SERVE_NODES]
    for scenario in concurrent:
        for level in plan.concurrency:
            timings = driver.measure_concurrent(
                [null, ours], scenario.call, plan.concurrent_calls, level, 2
            )
            for name, measured in timings.items():
                results.append(Measured(scenario, name, level, measured, {}))
            print(
                f"  {scenario.name:<26} {scenario.nodes:>5} nodes, {level} at once: ours "
                f"{timings[ours.name].calls_per_s:7.0f} calls/s, null "
                f"{timings[null.name].calls_per_s:7.0f} calls/s",
                flush=True,
            )
    return results


def ingest(plan: Plan, seed: int) -> report.Line:
    """Run bench.ingest in its own process and return its JSON line."""
    command = [
        sys.executable,
        "-m",
        "bench.ingest",
        f"--nodes={INGEST_NODES}",
        f"--pods-per-node={INGEST_PODS_PER_NODE}",
        f"--seed={seed}",
        f"--events={plan.events}",
    ]
    done = subprocess.run(command, capture_output=True, cwd=servers.REPO, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"ingest failed with status {done.returncode}:\n{done.stderr.decode()[-2000:]}"
        )
    line: report.Line = orjson.loads(done.stdout.splitlines()[-1])
    return line


def busy_cluster(quick: bool, templates: bodies.Templates, out: Path) -> list[report.Line] | None:
    """bench/busy.py's lines, or None (after saying why) if a process failed."""
    print("busy cluster: fake API server, ours in live mode, the null extender", flush=True)
    try:
        return busy.run(busy.QUICK if quick else busy.FULL, templates, out)
    except (servers.ServerError, driver.CallError) as error:
        print(f"bench: busy cluster: {error}", file=sys.stderr)
        return None


def write_reports(
    args: argparse.Namespace, lines: list[report.Line], context: dict[str, Any]
) -> str:
    """results.jsonl (appended), report.md and the plot, copied to --docs; the table."""
    command = "make bench-quick" if args.quick else "make bench"
    report.append_jsonl(args.out / "results.jsonl", [line | {"context": context} for line in lines])
    table = report.markdown(lines, command, context)
    (args.out / "report.md").write_text(table)
    report.plot(lines, args.out / "filter-latency.png")
    if args.profile:
        print(f"profile of ours: {args.out / 'profile' / 'ours.txt'} (and .html)")
    elif args.docs is not None:
        args.docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.out / "report.md", args.docs / "report.md")
        shutil.copyfile(args.out / "filter-latency.png", args.docs / "filter-latency.png")
    return table


def _context(plan: Plan, spec: ClusterSpec, snapshot: Path) -> dict[str, Any]:
    """What every line of this run is stamped with."""
    return {
        "run": datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ"),
        "time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": plan.mode,
        "commit": _commit(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "serve_nodes": spec.nodes,
        "serve_pods": spec.pods,
        "snapshot_mb": snapshot.stat().st_size / 1e6,
    }


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=servers.REPO,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description="Benchmark hostport-extender against a null one."
    )
    parser.add_argument("--quick", action="store_true", help="about a minute instead of several")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=servers.REPO / "bench" / "results")
    parser.add_argument(
        "--docs", type=Path, default=None, help="also copy report.md and the plot here"
    )
    parser.add_argument("--payloads", type=Path, default=bodies.DEFAULT_PAYLOADS)
    parser.add_argument("--skip-ingest", action="store_true", help="no ingest measurement")
    parser.add_argument("--skip-busy", action="store_true", help="no busy-cluster benchmark")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run ours under pyinstrument (bench/profile_server.py); figures are not published",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run everything, write the reports."""
    args = _parser().parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    try:
        templates = bodies.load_templates(args.payloads)
    except bodies.PayloadError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    spec = ClusterSpec(SERVE_NODES, plan.serve_pods_per_node, args.seed)
    print(f"bench ({plan.mode}): cluster of {spec.nodes:,} nodes, {spec.pods:,} pods", flush=True)
    snapshot = ensure_snapshot(args.out / "clusters", spec)
    context = _context(plan, spec, snapshot)
    found = scenarios(plan, spec, templates)
    ours_command = servers.ours_command(snapshot)
    grace_s = servers.STOP_GRACE_S
    if args.profile:
        context["mode"] += " (ours profiled)"
        ours_command = servers.profiled_command(snapshot, args.out / "profile" / "ours")
        grace_s = servers.PROFILED_STOP_GRACE_S
    logs = args.out / "logs"
    try:
        with (
            servers.running("null", servers.null_command(), logs) as null,
            servers.running("ours", ours_command, logs, stop_grace_s=grace_s) as ours,
        ):
            context["startup_ours_s"] = ours.startup_s
            context["startup_null_s"] = null.startup_s
            print(f"servers up (ours loaded its snapshot in {ours.startup_s:.1f} s)", flush=True)
            context["rss_ours_mb"], _ = servers.memory_mb(ours)
            measured = drive(plan, found, ours, null)
            context["peak_rss_ours_mb"] = servers.memory_mb(ours)[1]
            context["peak_rss_null_mb"] = servers.memory_mb(null)[1]
    except (servers.ServerError, driver.CallError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    lines = [_line(context, one) for one in measured]
    if not args.skip_ingest:
        print(f"ingest: {INGEST_NODES * INGEST_PODS_PER_NODE:,} pods in a subprocess", flush=True)
        line = ingest(plan, args.seed)
        line |= {"run": context["run"], "mode": plan.mode, "kind": "ingest"}
        lines.append(line)
    if not args.skip_busy:
        found_busy = busy_cluster(args.quick, templates, args.out)
        if found_busy is None:
            return 1
        lines += [line | {"run": context["run"], "mode": plan.mode} for line in found_busy]
    print(write_reports(args, lines, context))
    print(f"done in {time.perf_counter() - started:.0f} s; reports in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
