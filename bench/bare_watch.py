"""The baseline for watch CPU: a client that watches pods and does nothing with the events.

`python -m bench.bare_watch --kubeconfig FILE [--event-loop asyncio]` lists pods (`limit=1`, for
the current resourceVersion), then watches them the way our informer does (same field selector,
bookmarks, one keep-alive aiohttp session), reads each chunk and keeps what follows its last
newline, and does it again when the server ends the watch. It prints `watching` once the first
watch is open.

bench/busy.py reads its CPU time from /proc beside ours in the same windows: what it spends is
the cost of being woken for a stream of events on this machine (selector, transport, aiohttp's
HTTP parser, the task), which any watching extender pays before it looks at an event. Through
the busy rounds it also stands in for the scheduler's own pod informer, watching in the rounds
of both extenders as a real kube-scheduler's does. It runs on
the loop `serve` runs on by default (uvloop). Measured on the 2 shared cores this was written on,
on asyncio: ~280 us of CPU per wake-up at 100 wake-ups a second, whatever the heap size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import aiohttp
import orjson
import yaml

from extender.eventloop import loop_factory, run
from extender.kube.informer import PODS
from extender.settings import EVENT_LOOPS


def _server_and_token(kubeconfig: Path) -> tuple[str, str]:
    """The first cluster's server and the first user's bearer token (the busy fake's shape)."""
    config = yaml.safe_load(kubeconfig.read_text())
    return config["clusters"][0]["cluster"]["server"], config["users"][0]["user"]["token"]


async def watch_forever(server: str, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    selector = {"fieldSelector": PODS.field_selector}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        announced = False
        while True:  # each watch from the current resourceVersion (a fresh `limit=1` list)
            async with session.get(
                server + PODS.path, params={"limit": "1", **selector}
            ) as response:
                rv = orjson.loads(await response.read())["metadata"]["resourceVersion"]
            params = {
                "watch": "1",
                "resourceVersion": rv,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": "300",
                **selector,
            }
            async with session.get(server + PODS.path, params=params) as response:
                if not announced:
                    print("watching", flush=True)
                    announced = True
                partial = b""
                async for chunk in response.content.iter_any():
                    data = partial + chunk
                    cut = data.rfind(b"\n") + 1
                    partial = data[cut:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_watch", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default=EVENT_LOOPS[0])
    args = parser.parse_args(argv)
    server, token = _server_and_token(args.kubeconfig)
    # Until the benchmark stops it (SIGTERM).
    run(loop_factory(args.event_loop), watch_forever(server, token))
    return 0


if __name__ == "__main__":
    sys.exit(main())
