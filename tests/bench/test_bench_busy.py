"""The busy-cluster benchmark's parts: realistic watch lines, the scheduler's traffic, reports."""

from __future__ import annotations

import os
import time
from typing import Any

import orjson
import pytest

from bench import bodies, busy, report
from bench.busy_api import BusyApi, go_order
from bench.generate import ClusterSpec, generate_node, generate_pods_for_node, node_name
from bench.run import rejected_everywhere
from extender.core.cluster import Cluster
from extender.core.decisions import filter_pod
from extender.core.podline import portless_pod_event
from extender.core.pods import decode_pod, may_hold_ports
from extender.settings import Settings
from tests.fakeapi import FakeApiServer, eventually

SPEC = ClusterSpec(4, 6, 1)


def test_stored_pods_are_written_in_the_api_servers_key_order() -> None:
    """Watch lines of the busy cluster look like kube-apiserver's: the prefilter can read them."""
    for raw in generate_pods_for_node(SPEC, 1):
        ordered = go_order(raw, "Pod")
        assert list(ordered)[:3] == ["kind", "apiVersion", "metadata"]
        assert list(ordered["metadata"])[:2] == ["name", "generateName"]
        ordered["metadata"]["resourceVersion"] = "7"
        line = orjson.dumps({"type": "MODIFIED", "object": ordered})
        event = portless_pod_event(line)
        if may_hold_ports(raw):
            assert event is None
        else:
            assert event is not None
            assert (event.uid, event.resource_version) == (raw["metadata"]["uid"], "7")


async def test_the_scheduler_traffic_creates_binds_and_starts_pods() -> None:
    """add, bind (then the kubelet's status) and churn change the fake's pods as a cluster does."""
    fake = FakeApiServer(token="t")
    busy_api = BusyApi(fake)
    busy_api.load(SPEC)
    maker = busy.PodMaker(bodies.load_templates(), seed=1)
    busy_api.command("add " + orjson.dumps(maker.pod(0)).decode())
    stored = fake.get("pods", "busy/busy-0")
    assert stored["status"]["phase"] == "Pending"
    assert stored["spec"]["containers"][0]["ports"][0]["hostPort"] == busy.HOSTPORT_BASE
    busy_api.command(f"bind busy/busy-0 {node_name(2)}")
    assert fake.get("pods", "busy/busy-0")["spec"]["nodeName"] == node_name(2)
    await eventually(lambda: fake.get("pods", "busy/busy-0")["status"]["phase"] == "Running")
    assert busy_api.command("churn 500 plain") == {"pool": len(busy_api.pools["plain"])}
    await eventually(lambda: busy_api.churned > 0)
    busy_api.command("churn 0 plain")
    stats = busy_api.command("stats")
    assert stats is not None
    assert stats["churned"] > 0
    assert stats["events"] == stats["churned"] + 3


def test_cpu_seconds_reads_this_process() -> None:
    """Time on a CPU from schedstat: positive, it grows with work by about the work's own CPU
    time, and a few microseconds of work show (10 ms clock ticks would not)."""
    before, clock = busy.cpu_seconds(os.getpid()), time.process_time()
    sum(i * i for i in range(3_000_000))
    spent, measured = time.process_time() - clock, busy.cpu_seconds(os.getpid()) - before
    assert before > 0
    assert measured == pytest.approx(spent, rel=0.2, abs=0.02)
    time.sleep(0.005)  # runtime is booked when the thread leaves the CPU
    before, clock = busy.cpu_seconds(os.getpid()), time.process_time()
    while time.process_time() - clock < 0.003:
        pass
    time.sleep(0.005)
    assert 0.002 < busy.cpu_seconds(os.getpid()) - before < 0.008  # ticks: 0 or 0.01


def test_the_rejection_scenario_is_rejected_on_every_node() -> None:
    """The stuck-DaemonSet pod (hostNetwork, 8125/UDP) fits on none of the generated nodes."""
    cluster = Cluster(Settings())
    cluster.nodes.replace([generate_node(SPEC, i) for i in range(SPEC.nodes)])
    cluster.pods.replace([p for i in range(SPEC.nodes) for p in generate_pods_for_node(SPEC, i)])
    pod = decode_pod(rejected_everywhere(bodies.load_templates().names_hostport)["Pod"])
    names = [node_name(i) for i in range(SPEC.nodes)]
    verdict = filter_pod(cluster, pod, names)
    assert verdict.passed == []
    assert sorted(verdict.rejected) == sorted(names)


def busy_line(server: str, pods_per_s: float, p99: float) -> dict[str, Any]:
    return {
        "kind": "busy", "server": server, "nodes": 300, "pods_per_s": pods_per_s,
        "filter_p50_ms": 1.0, "filter_p99_ms": p99, "prioritize_p50_ms": 1.0,
        "prioritize_p99_ms": 2.0, "events_per_s": 600.0,
        "server_cpu_ms_per_pod": 1.5 if server == "ours" else 1.0,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("ours", "null", "met"),
    [((960.0, 3.0), (1000.0, 2.0), True), ((900.0, 5.0), (1000.0, 2.0), False)],
)
def test_busy_targets_compare_ours_with_the_null_extender(
    ours: tuple[float, float], null: tuple[float, float], met: bool
) -> None:
    """pods/s at least 0.95x and filter p99 at most 2x the null extender's, from the same run."""
    lines = [busy_line("ours", *ours), busy_line("null", *null)]
    found = {t.name: t for t in report.busy_targets(lines)}
    throughput = found["busy cluster, 300 names: pods/s ours / null"]
    tail = found["busy cluster, 300 names: filter p99 ours / null"]
    assert throughput.measured == pytest.approx(ours[0] / null[0])
    assert (throughput.met and tail.met) is met
    table = "\n".join(report.busy_markdown(lines))
    assert "| 300 |" in table
    assert table.splitlines()[-1].endswith("| 1.50 / 1.00 | - / - |")  # without the fake's CPU
    lines[0]["fake_cpu_ms_per_pod"], lines[1]["fake_cpu_ms_per_pod"] = 0.45, 0.3
    assert "| 0.45 / 0.30 |" in "\n".join(report.busy_markdown(lines))
    assert "nobody watches in the null's rounds" in table
    assert "resident once synced" not in table
    for line in lines:
        line["scheduler_watch"] = True
        line["ours_sync_s"], line["ours_synced_rss_mb"] = 3.5, 123.4
    table = "\n".join(report.busy_markdown(lines))
    assert "the scheduler's own pod watch" in table
    assert "3.5 s initial sync, 123 MB resident once synced" in table


def test_the_paired_ratio_compares_each_round_with_its_neighbour() -> None:
    """Rounds that drift with the machine (both servers slower in the second half) still pair
    up: the median of the per-round ratios, beside the ratio of the medians."""
    ours, null = busy_line("ours", 700.0, 2.0), busy_line("null", 800.0, 2.0)
    ours["pods_per_s_rounds"] = [900.0, 880.0, 500.0, 450.0, 700.0]
    null["pods_per_s_rounds"] = [1000.0, 1000.0, 600.0, 500.0, 800.0]
    row = next(r for r in report.busy_markdown([ours, null]) if r.startswith("| 300 |"))
    cells = [cell.strip() for cell in row.split("|")]
    assert cells[4:6] == ["0.88", "0.88"]  # 700 / 800, and the median of 0.9, 0.88, 0.83, 0.9, 0.88
    ours["pods_per_s_rounds"] = [900.0, 880.0, 500.0, 450.0, 1000.0]
    row = next(r for r in report.busy_markdown([ours, null]) if r.startswith("| 300 |"))
    assert [cell.strip() for cell in row.split("|")][5] == "0.90"
    del ours["pods_per_s_rounds"]
    row = next(r for r in report.busy_markdown([ours, null]) if r.startswith("| 300 |"))
    assert [cell.strip() for cell in row.split("|")][5] == "-"


def paced_line(server: str, calls_p50: float, cpu_ms: float) -> dict[str, Any]:
    return {
        "kind": "busy-paced", "server": server, "nodes": 300, "calls_p50_ms": calls_p50,
        "calls_p99_ms": 3 * calls_p50, "pace_pods_per_s": 144.0,
        "scheduler_with_null_pods_per_s": 100.0, "server_cpu_ms_per_pod": cpu_ms,
        "events_per_s": 450.0,
    }  # fmt: skip


def test_paced_rounds_report_the_time_per_pod_and_what_it_costs_a_scheduler() -> None:
    """At a real scheduler's pace the table gives each pod's two calls, ours beside null, and
    the pods/s a scheduler at 100 pods/s with the null extender would keep: 10 ms per cycle,
    0.5 ms more per pod gives 10 / 10.5."""
    lines = [busy_line("ours", 900.0, 3.0), busy_line("null", 1000.0, 2.0)]
    paced = [paced_line("ours", 1.5, 0.8), paced_line("null", 1.0, 0.5)]
    table = report.busy_markdown([*lines, *paced])
    row = next(line for line in table if line.startswith("| 300 | 1.50 / 4.50 |"))
    assert row == "| 300 | 1.50 / 4.50 | 1.00 / 3.00 | 0.50 | 0.952 | 0.80 / 0.50 | 450 |"
    # Lines from before the null extender's CPU was recorded: ours under its old name.
    for line in paced:
        line["ours_cpu_ms_per_pod"] = line.pop("server_cpu_ms_per_pod")
    table = report.busy_markdown([*lines, *paced])
    row = next(line for line in table if line.startswith("| 300 | 1.50 / 4.50 |"))
    assert "| 0.80 / - |" in row
    assert any("Paced at 144 pods/s" in line for line in table)
    assert report.scheduler_ratio(-0.3, 100.0) == 1.0  # faster than null: no gain claimed
