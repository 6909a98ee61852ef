"""Our server, as `hostport-extender serve --snapshot` builds it, with the serving phase profiled.

Keep `main` in step with `extender.server.serve.run` (snapshot load, heap freeze, metrics), or the
profile describes a server nobody runs.

`python -m bench.run --profile` starts this instead of the `hostport-extender` script. Loading the
snapshot is not profiled (the ingest benchmark covers it); from the first request to SIGTERM,
pyinstrument samples the process, and on exit the profile is written as text and HTML so the
top frames of a slow call can be read without rerunning anything.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinstrument import Profiler

from extender.server.app import create_app
from extender.server.binding import SnapshotBinder
from extender.server.live import create_live_app
from extender.server.metrics import new_metrics
from extender.server.readiness import AlwaysReady
from extender.server.serve import load_snapshot_cluster, serve_app
from extender.settings import Settings


@dataclass(slots=True)
class GcPauses:
    """Durations of the cyclic garbage collector's runs, per generation."""

    started: float = 0.0
    seconds: dict[int, list[float]] = field(default_factory=lambda: {0: [], 1: [], 2: []})
    since: float = field(default_factory=time.perf_counter)
    long: list[tuple[float, int, float, int]] = field(default_factory=list)
    """(seconds since serving began, generation, pause, objects collected) of pauses > 10 ms:
    when they happen says what caused them (a sync, a relist, a burst)."""

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            now = time.perf_counter()
            pause = now - self.started
            self.seconds[info["generation"]].append(pause)
            if pause > 0.01:
                self.long.append((now - self.since, info["generation"], pause, info["collected"]))

    def summary(self) -> str:
        lines = ["garbage collector pauses while serving:"]
        for generation, pauses in self.seconds.items():
            if pauses:
                lines.append(
                    f"  gen {generation}: {len(pauses)} runs, {sum(pauses) * 1000:.0f} ms in all,"
                    f" longest {max(pauses) * 1000:.1f} ms"
                )
        lines.extend(
            f"  at {at:7.1f} s: gen {generation} {pause * 1000:.1f} ms, {collected} collected"
            for at, generation, pause, collected in self.long
        )
        return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.profile_server (--snapshot F | --kubeconfig F) --listen H:P --out P`."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile_server")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--snapshot", type=Path)
    source.add_argument("--kubeconfig", help="live mode, as `serve --kubeconfig` (bench.busy)")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--out", type=Path, required=True, help="writes PREFIX.txt, PREFIX.html")
    parser.add_argument("--interval", type=float, default=0.0005, help="sampling interval, s")
    parser.add_argument(
        "--gc-only", action="store_true", help="no sampling: only the collector's pauses (.txt)"
    )
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    settings = Settings(listen_host=host, listen_port=int(port))
    if args.kubeconfig:
        app, _, summary = create_live_app(
            settings, kubeconfig=args.kubeconfig, context=None, metrics=new_metrics()
        )
    else:
        # Loaded exactly as `serve --snapshot` loads it (GC policy, compaction, freeze).
        cluster, summary = load_snapshot_cluster(settings, [args.snapshot])
        app = create_app(
            cluster,
            settings,
            binder=SnapshotBinder(cluster),
            readiness=AlwaysReady(),
            metrics=new_metrics(),
        )
    summary += " (profiled)"
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    profiler = None if args.gc_only else Profiler(interval=args.interval, async_mode="disabled")
    if profiler is not None:
        profiler.start()
    try:
        asyncio.run(serve_app(app, settings, summary))
    finally:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if profiler is None:
            args.out.with_suffix(".txt").write_text(pauses.summary())
        else:
            profiler.stop()
            text = profiler.output_text(show_all=False)
            args.out.with_suffix(".txt").write_text(pauses.summary() + text)
            args.out.with_suffix(".html").write_text(profiler.output_html())
    return 0


if __name__ == "__main__":
    sys.exit(main())
