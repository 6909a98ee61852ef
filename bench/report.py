"""Reports of one run: JSON lines for machines, a Markdown table for people, a PNG plot.

Every HTTP figure of our server is shown next to the null extender's from the same run, with the
ratio; the issue's targets are checked against those ratios, not against absolute times.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

OURS = "ours"
NULL = "null"

Line = dict[str, Any]


def append_jsonl(path: Path, lines: Iterable[Line]) -> None:
    """Append one JSON object per line, so runs accumulate into one history file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as out:
        for line in lines:
            out.write(orjson.dumps(line) + b"\n")


def _http(lines: Sequence[Line], server: str) -> dict[tuple[str, int, int], Line]:
    return {
        (line["scenario"], line["nodes"], line["concurrency"]): line
        for line in lines
        if line.get("kind") == "http" and line["server"] == server
    }


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _ratio(ours: Line, null: Line, key: str = "p50_ms") -> float:
    return float(ours[key]) / float(null[key]) if null[key] else float("inf")


@dataclass(frozen=True, slots=True)
class Target:
    """One of the issue's targets and how this run did against it."""

    name: str
    measured: float
    limit: float
    unit: str
    at_least: bool = False
    """The limit is a floor (throughput) rather than a ceiling (time, memory, ratio)."""

    @property
    def met(self) -> bool:
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit

    @property
    def text(self) -> str:
        bound = ">=" if self.at_least else "<="
        if self.unit == "x":
            return f"{self.measured:.2f}x (target {bound} {self.limit:g}x)"
        return f"{self.measured:,.2f} {self.unit} (target {bound} {self.limit:,g} {self.unit})"


def targets(lines: Sequence[Line]) -> list[Target]:
    """The issue's targets that this run's lines can answer."""
    ours, null = _http(lines, OURS), _http(lines, NULL)
    found: list[Target] = []
    key = ("filter-names-hostport", 5000, 1)
    if key in ours and key in null:
        found.append(
            Target("filter, 5,000 NodeNames, host-port pod: p99", ours[key]["p99_ms"], 2.0, "ms")
        )
        found.append(
            Target(
                "filter, 5,000 NodeNames, host-port pod: p50 / null p50",
                _ratio(ours[key], null[key]),
                1.3,
                "x",
            )
        )
    key = ("filter-names-plain", 5000, 1)
    if key in ours and key in null:
        found.append(
            Target(
                "filter, 5,000 NodeNames, pod without host ports: p50 / null p50",
                _ratio(ours[key], null[key]),
                1.1,
                "x",
            )
        )
    key = ("filter-names-rejected", 5000, 1)
    if key in ours and key in null:
        found.append(
            Target(
                "filter, 5,000 NodeNames, pod rejected on every node: p50 / null p50",
                _ratio(ours[key], null[key]),
                3.0,
                "x",
            )
        )
    key = ("prioritize-names-hostport", 5000, 1)
    if key in ours and key in null:
        found.append(
            Target(
                "prioritize, 5,000 NodeNames: p50 / null p50",
                _ratio(ours[key], null[key]),
                1.5,
                "x",
            )
        )
    key = ("filter-nodes-hostport", 1000, 1)
    if key in ours and key in null:
        found.append(
            Target(
                "filter, 1,000 full Nodes: p50 / null p50", _ratio(ours[key], null[key]), 1.5, "x"
            )
        )
    found += busy_targets(lines)
    for line in lines:
        if line.get("kind") == "ingest":
            label = f"{line['pods']:,} pods / {line['nodes']:,} nodes"
            found.append(Target(f"ingest {label}: index time", line["index_s"], 5.0, "s"))
            found.append(
                Target(
                    f"ingest {label}: decode + index time",
                    line["index_s"] + line["decode_s"],
                    5.0,
                    "s",
                )
            )
            found.append(
                Target("watch events applied", line["events_per_s"], 50_000, "events/s", True)
            )
            found.append(Target("peak RSS after ingest", line["peak_rss_mb"], 200.0, "MB"))
    return found


def _busy(lines: Sequence[Line], server: str, kind: str = "busy") -> dict[int, Line]:
    """One server's busy-cluster lines of `kind` ("busy" or "busy-paced"), by node count."""
    return {
        line["nodes"]: line
        for line in lines
        if line.get("kind") == kind and line["server"] == server
    }


def busy_targets(lines: Sequence[Line]) -> list[Target]:
    """The busy-cluster targets of issue 15: throughput, tail under load, CPU per event."""
    ours, null = _busy(lines, OURS), _busy(lines, NULL)
    found: list[Target] = []
    for nodes in (300, 1000):
        if nodes in ours and nodes in null and null[nodes]["pods_per_s"]:
            found.append(
                Target(
                    f"busy cluster, {nodes:,} names: pods/s ours / null",
                    ours[nodes]["pods_per_s"] / null[nodes]["pods_per_s"],
                    0.95,
                    "x",
                    at_least=True,
                )
            )
    for nodes in sorted(ours):
        if nodes in null and null[nodes]["filter_p99_ms"]:
            found.append(
                Target(
                    f"busy cluster, {nodes:,} names: filter p99 ours / null",
                    ours[nodes]["filter_p99_ms"] / null[nodes]["filter_p99_ms"],
                    2.0,
                    "x",
                )
            )
    for line in lines:
        if line.get("kind") == "busy-cpu":
            plain = line["pods"] == "plain"
            found.append(
                Target(
                    f"CPU per 1,000 watch events, pods {'without' if plain else 'with'} host ports",
                    line["cpu_ms_per_1000"],
                    20.0 if plain else 100.0,
                    "ms",
                )
            )
    return found


def _bare_watch(line: Line) -> str:
    """The same windows' figure for bench/bare_watch.py, the floor any watching client pays."""
    bare = line.get("bare_cpu_ms_per_1000")
    if not bare:
        return ""
    return (
        f"; a bare watch client (bench/bare_watch.py: aiohttp on uvloop, reads the same stream, "
        f"decodes nothing) {bare:.1f} ms, so ours is "
        f"{line['cpu_ms_per_1000'] / bare:.2f}x that floor"
    )


def _fake_cpu(line: Line) -> str:
    """The fake API server's CPU per scheduled pod in a round ("-" in lines from before it was
    recorded): what streaming our watch costs the API server's side of the machine."""
    value = line.get("fake_cpu_ms_per_pod")
    return "-" if value is None else f"{value:.2f}"


def _server_cpu(line: Line, *, ours: bool) -> str:
    """The driven extender's CPU per scheduled pod ("-" where a line from before null's was
    recorded has none; those lines named ours' `ours_cpu_ms_per_pod`)."""
    value = line.get("server_cpu_ms_per_pod")
    if value is None and ours:
        value = line.get("ours_cpu_ms_per_pod")
    return "-" if value is None else f"{value:.2f}"


def scheduler_ratio(extra_ms: float, with_null_pods_per_s: float) -> float:
    """The pods/s a scheduler that ran `with_null_pods_per_s` with the null extender would run
    with ours, if each of its cycles waited `extra_ms` longer (an estimate, not a measurement)."""
    cycle_ms = 1000.0 / with_null_pods_per_s
    return cycle_ms / (cycle_ms + max(0.0, extra_ms))


def _paced_markdown(lines: Sequence[Line]) -> list[str]:
    """The paced rounds: what each pod's two calls take at a real scheduler's rate."""
    ours, null = _busy(lines, OURS, "busy-paced"), _busy(lines, NULL, "busy-paced")
    sizes = [nodes for nodes in sorted(ours) if nodes in null]
    if not sizes:
        return []
    first = ours[sizes[0]]
    with_null = first["scheduler_with_null_pods_per_s"]
    out = [
        "",
        f"Paced at {first['pace_pods_per_s']:.0f} pods/s (what a real kube-scheduler v1.36 ran "
        "on this machine with no extender): filter + prioritize per pod, and what the "
        f"difference would cost that scheduler, which ran {with_null:.0f} pods/s with a "
        "do-nothing extender (an estimate: its cycle plus our extra p50):",
        "",
        "| names | ours p50 / p99 ms | null p50 / p99 ms | ours - null p50 ms "
        "| estimated scheduler pods/s ours / null | CPU ms per pod, ours / null "
        "| watch events/s |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for nodes in sizes:
        mine, base = ours[nodes], null[nodes]
        extra = mine["calls_p50_ms"] - base["calls_p50_ms"]
        out.append(
            f"| {nodes:,} | {_ms(mine['calls_p50_ms'])} / {_ms(mine['calls_p99_ms'])} "
            f"| {_ms(base['calls_p50_ms'])} / {_ms(base['calls_p99_ms'])} | {extra:.2f} "
            f"| {scheduler_ratio(extra, with_null):.3f} "
            f"| {_server_cpu(mine, ours=True)} / {_server_cpu(base, ours=False)} "
            f"| {mine['events_per_s']:,.0f} |"
        )
    return out


def paired_ratio(ours_rounds: Sequence[float], null_rounds: Sequence[float]) -> float | None:
    """The median over rounds of ours / null, each round against the null round beside it
    (None without rounds to pair).

    bench.busy alternates the two servers round by round, so a round and its neighbour saw the
    same load on the shared machine; the ratio of the two medians mixes rounds minutes apart.
    """
    if len(ours_rounds) != len(null_rounds):
        return None
    ratios = [o / n for o, n in zip(ours_rounds, null_rounds, strict=True) if n]
    return statistics.median(ratios) if ratios else None


def _paired_cell(mine: Line, base: Line) -> str:
    paired = paired_ratio(mine.get("pods_per_s_rounds") or [], base.get("pods_per_s_rounds") or [])
    return "-" if paired is None else f"{paired:.2f}"


def _synced_rss(line: Line) -> str:
    rss = line.get("ours_synced_rss_mb")
    return "" if rss is None else f", {rss:.0f} MB resident once synced"


def busy_markdown(lines: Sequence[Line]) -> list[str]:
    """The busy-cluster table: ours in live mode beside the null extender, per size."""
    ours, null = _busy(lines, OURS), _busy(lines, NULL)
    if not ours:
        return []
    first = next(iter(ours.values()))
    out = [
        "",
        "Busy cluster (`bench/busy.py`: ours in live mode, watching a fake API server with "
        f"{first.get('ours_sync_s', 0):.1f} s initial sync{_synced_rss(first)}; serial "
        "create, filter, "
        "prioritize, bind; 1 pod in 3 with a hostPort; 200 status events/s of other pods; "
        "medians of alternating rounds; the paired ratio is the median of each round's ours / "
        "null with the null round next to it, steadier when the machine's load drifts; "
        + (
            "the scheduler's own pod watch, a bare watch client, runs in both):"
            if first.get("scheduler_watch")
            else "nobody watches in the null's rounds):"
        ),
        "",
        "| names | ours pods/s | null pods/s | ratio | paired ratio | ours filter p50 / p99 ms "
        "| null filter p50 / p99 ms | ours prioritize p50 / p99 ms "
        "| null prioritize p50 / p99 ms | watch events/s | CPU ms per pod, ours / null "
        "| fake API CPU ms per pod, our / null rounds |",
        "|---:|---:|---:|---:|---:|---|---|---|---|---:|---:|---|",
    ]
    for nodes, mine in sorted(ours.items()):
        base = null.get(nodes)
        if base is None:
            continue
        ratio = mine["pods_per_s"] / base["pods_per_s"] if base["pods_per_s"] else float("inf")
        out.append(
            f"| {nodes:,} | {mine['pods_per_s']:,.0f} | {base['pods_per_s']:,.0f} | {ratio:.2f} "
            f"| {_paired_cell(mine, base)} "
            f"| {_ms(mine['filter_p50_ms'])} / {_ms(mine['filter_p99_ms'])} "
            f"| {_ms(base['filter_p50_ms'])} / {_ms(base['filter_p99_ms'])} "
            f"| {_ms(mine['prioritize_p50_ms'])} / {_ms(mine['prioritize_p99_ms'])} "
            f"| {_ms(base['prioritize_p50_ms'])} / {_ms(base['prioritize_p99_ms'])} "
            f"| {mine['events_per_s']:,.0f} "
            f"| {_server_cpu(mine, ours=True)} / {_server_cpu(base, ours=False)} "
            f"| {_fake_cpu(mine)} / {_fake_cpu(base)} |"
        )
    out += _paced_markdown(lines)
    for line in lines:
        if line.get("kind") == "busy-cpu":
            what = "without" if line["pods"] == "plain" else "with"
            out.append("")
            out.append(
                f"Watch events only, pods {what} host ports: {line['events']:,} status updates "
                f"at {line['rate']}/s; ours {line['cpu_s'] * 1000:.0f} ms CPU (idle rate "
                f"{line['idle_cpu_s'] * 1000:.0f} ms of it) = "
                f"**{line['cpu_ms_per_1000']:.1f} ms per 1,000 events** (schedstat; "
                f"the rounds: {', '.join(map(str, line.get('rounds_ms_per_1000', [])))} ms)"
                + _bare_watch(line)
                + "."
            )
    for line in lines:
        if line.get("kind") == "busy-stall":
            out.append("")
            out.append(
                f"A filter call (300 names) while {line['what']} is applied: slowest "
                f"{line['after_max_ms']:.1f} ms (in the second before: slowest "
                f"{line['before_max_ms']:.1f} ms, p99 {line['before_p99_ms']:.1f} ms)."
            )
    return out


def markdown(lines: Sequence[Line], command: str, context: Line) -> str:
    """The README's table: our figures, the null extender's, the ratios, the targets."""
    ours, null = _http(lines, OURS), _http(lines, NULL)
    out = [
        f"Command: `{command}` ({context['mode']} mode, {context['time']}, "
        f"commit {context['commit']}, {context['cpus']} CPUs, Python {context['python']}, "
        f"load average {context['load_before']} before the run).",
        "",
        f"Server cluster: {context['serve_nodes']:,} nodes, {context['serve_pods']:,} pods "
        f"(snapshot {context['snapshot_mb']:.0f} MB); startup to first healthy /healthz: "
        f"ours {context['startup_ours_s']:.1f} s, null {context['startup_null_s']:.1f} s; "
        f"ours resident {context['rss_ours_mb']:.0f} MB once loaded; peak resident over the run "
        f"ours {context['peak_rss_ours_mb']:.0f} MB, null {context['peak_rss_null_mb']:.0f} MB.",
        "",
        "| call | nodes | conc. | ours p50 / p90 / p99 ms | ours calls/s "
        "| null p50 / p90 / p99 ms | null calls/s | p50 ratio | p99 ratio | ours answered |",
        "|---|---:|---:|---|---:|---|---:|---:|---:|---|",
    ]
    for key, mine in ours.items():
        base = null.get(key)
        if base is None:
            continue
        scenario, nodes, concurrency = key
        answer = ", ".join(f"{k} {v}" for k, v in (mine.get("answer") or {}).items() if v != "")
        errors = f" ({mine['errors']} errors)" if mine["errors"] else ""
        out.append(
            f"| {scenario} | {nodes:,} | {concurrency} "
            f"| {_ms(mine['p50_ms'])} / {_ms(mine['p90_ms'])} / {_ms(mine['p99_ms'])} "
            f"| {mine['calls_per_s']:,.0f} "
            f"| {_ms(base['p50_ms'])} / {_ms(base['p90_ms'])} / {_ms(base['p99_ms'])} "
            f"| {base['calls_per_s']:,.0f} | {_ratio(mine, base):.2f} "
            f"| {_ratio(mine, base, 'p99_ms'):.2f} | {answer}{errors} |"
        )
    for line in lines:
        if line.get("kind") == "ingest":
            out += [
                "",
                f"Ingest ({line['pods']:,} pods, {line['nodes']:,} nodes, pages of 500 cut into "
                f"items, those that may claim a port decoded with orjson and upserted): "
                f"decode {line['decode_s']:.2f} s + index {line['index_s']:.2f} s; "
                f"{line['pods_with_host_ports']:,} pods kept for their "
                f"host ports; RSS {line['rss_before_mb']:.0f} MB before, "
                f"{line['rss_after_mb']:.0f} MB after, peak {line['peak_rss_mb']:.0f} MB; "
                f"{line['events']:,} watch events at {line['events_per_s']:,.0f} events/s.",
            ]
    out += busy_markdown(lines)
    found = targets(lines)
    if found:
        out += ["", "| target | this run | met |", "|---|---|---|"]
        out += [f"| {t.name} | {t.text} | {'yes' if t.met else '**no**'} |" for t in found]
    return "\n".join(out) + "\n"


def plot(lines: Sequence[Line], path: Path) -> None:
    """Filter latency against node count, ours and the baseline: p50 left, p99 right."""
    import matplotlib  # noqa: PLC0415 (only `make bench` installs it: keep other imports cheap)

    matplotlib.use("Agg")
    from matplotlib import pyplot  # noqa: PLC0415 (after choosing the headless backend)

    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4.5), dpi=110, sharex=True)
    styles = {
        (OURS, "filter-names-hostport"): ("tab:red", "-o", "ours, pod with host ports"),
        (OURS, "filter-names-plain"): ("tab:orange", "-s", "ours, pod without host ports"),
        (NULL, "filter-names-hostport"): ("tab:blue", "--o", "null extender, pod with host ports"),
        (NULL, "filter-names-plain"): ("tab:cyan", "--s", "null extender, pod without"),
    }
    for (server, scenario), (colour, style, label) in styles.items():
        points = sorted(
            (line["nodes"], line["p50_ms"], line["p99_ms"])
            for line in lines
            if line.get("kind") == "http"
            and line["server"] == server
            and line["scenario"] == scenario
            and line["concurrency"] == 1
        )
        if not points:
            continue
        xs = [p[0] for p in points]
        left.plot(xs, [p[1] for p in points], style, color=colour, label=label)
        right.plot(xs, [p[2] for p in points], style, color=colour, label=label)
    right.axhline(2.0, color="grey", linewidth=0.8, linestyle=":", label="p99 target, 2 ms")
    for axes, title in ((left, "p50"), (right, "p99")):
        axes.set_title(f"filter latency, {title} (serial keep-alive calls on loopback)")
        axes.set_xlabel("nodes in the call (NodeNames)")
        axes.set_ylabel("ms, client-side")
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
    left.legend(fontsize=8, loc="upper left")
    right.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    pyplot.close(figure)
