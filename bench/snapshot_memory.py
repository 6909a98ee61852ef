"""Snapshot mode's memory and start time: `serve --snapshot` over a generated dump, as a process.

`python -m bench.snapshot_memory [--nodes 5000 --pods-per-node 10] [--format json|yaml]` writes
the dump (bench/generate.py; YAML converted from it), starts `python -m extender serve
--snapshot` on it, and prints: seconds until the banner (ready to answer), resident memory once
ready (VmRSS, after one filter call) and its peak while loading (VmHWM), each against the dump's
size. Run it a few times: the machine is shared, so time-to-ready is noisy (report the median).
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
import yaml

REPO = Path(__file__).resolve().parents[1]
FILTER = REPO / "config" / "samples" / "filter-pod-identity-agent.json"


def status_mb(pid: int, field: str) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) / 1024


def write_dump(directory: Path, nodes: int, pods_per_node: int, form: str) -> Path:
    path = directory / "dump.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.generate",
            "--nodes",
            str(nodes),
            "--pods-per-node",
            str(pods_per_node),
            "-o",
            str(path),
        ],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    if form == "yaml":
        data = orjson.loads(path.read_bytes())
        yaml_path = directory / "dump.yaml"
        with yaml_path.open("w") as out:
            yaml.dump(data, out, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper))
        path.unlink()
        return yaml_path
    return path


def measure(dump: Path) -> dict[str, float]:
    """One start of `serve --snapshot dump`: time to banner, RSS ready and peak."""
    started = time.monotonic()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "extender",
            "serve",
            "--snapshot",
            str(dump),
            "--listen",
            "127.0.0.1:0",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        ready_s = time.monotonic() - started
        match = re.search(r"on (http://127\.0\.0\.1:\d+)", banner)
        if match is None:
            raise SystemExit(f"serve failed: {banner!r} {process.communicate()[1][-2000:]}")
        request = urllib.request.Request(
            f"{match.group(1)}/filter",
            data=FILTER.read_bytes(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
        return {
            "ready_s": ready_s,
            "rss_mb": status_mb(process.pid, "VmRSS"),
            "peak_mb": status_mb(process.pid, "VmHWM"),
        }
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods-per-node", type=int, default=10)
    parser.add_argument("--format", choices=("json", "yaml"), default="json")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dump", type=Path, help="use this dump instead of generating one")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        dump = args.dump or write_dump(Path(tmp), args.nodes, args.pods_per_node, args.format)
        size_mb = dump.stat().st_size / 2**20
        runs = [measure(dump) for _ in range(args.runs)]
    ready = statistics.median(r["ready_s"] for r in runs)
    rss = statistics.median(r["rss_mb"] for r in runs)
    peak = statistics.median(r["peak_mb"] for r in runs)
    print(
        f"snapshot {dump.name} {size_mb:.0f} MiB: ready in {ready:.2f} s (median of {len(runs)}: "
        + ", ".join(f"{r['ready_s']:.2f}" for r in runs)
        + f"); RSS ready {rss:.0f} MiB = {rss / size_mb:.2f}x the file; "
        f"peak {peak:.0f} MiB = {peak / size_mb:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
