"""Size of `hostports.dev/observed` for a busy node: 5,000 synthetic listeners, three mixes.

Run: .venv/bin/python bench/agent_annotation.py. Prints one line per mix: bytes of the exact
text, the bytes actually published under the default 64 KiB budget, and how it was coarsened.
"""

from __future__ import annotations

import random
import time

from extender.agent.command import DEFAULT_MAX_ANNOTATION_BYTES, encode_observed
from extender.agent.procnet import Listener

COUNT = 5000
LIMIT = 256 * 1024  # all annotations of one object together (apimachinery ValidateAnnotations)


def _mix(name: str, rng: random.Random) -> set[Listener]:
    listeners: set[Listener] = set()
    v4 = ["", "10.0.12.34", "169.254.170.23", "127.0.0.1"]
    v6 = ["fd00:ec2::23", "2600:1f18:4a2b:9c00:8e3a:1b2c:3d4e:5f60"]
    while len(listeners) < COUNT:
        port = rng.randint(1024, 65535)
        if name == "wildcard-tcp":
            listeners.add(Listener("TCP", port, ""))
        elif name == "mixed":
            protocol = rng.choices(["TCP", "UDP", "SCTP"], weights=[60, 35, 5])[0]
            listeners.add(Listener(protocol, port, rng.choice(v4 + v6)))
        else:  # every listener on its own long IPv6 address: far beyond any real node
            address = f"2600:1f18:4a2b:9c00::{rng.randrange(1, 65535):x}"
            listeners.add(Listener("UDP", port, address))
    return listeners


def main() -> None:
    rng = random.Random(2026)
    budget = DEFAULT_MAX_ANNOTATION_BYTES
    print(f"{COUNT} listeners per mix; budget {budget} B; API limit {LIMIT} B")
    for name in ("wildcard-tcp", "mixed", "one-ipv6-each"):
        listeners = _mix(name, rng)
        exact = encode_observed(listeners, max_bytes=LIMIT * 4)
        start = time.perf_counter()
        published = encode_observed(listeners)
        elapsed = (time.perf_counter() - start) * 1000
        print(
            f"{name:14} exact {len(exact.text):7,} B ({len(exact.text) / LIMIT:5.1%} of limit)"
            f" | published {len(published.text):6,} B in {elapsed:5.1f} ms"
            f" | {published.coarsened or 'exact'}"
        )


if __name__ == "__main__":
    main()
