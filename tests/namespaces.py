"""Throw-away network namespaces for tests that need real sockets and real conntrack.

Each namespace gets a unique name and is deleted when the test ends, whatever happens. Needs
root and iproute2 (`ip`); `require_netns()` says plainly which one is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

PYTHON = sys.executable


def require_netns() -> None:
    """Fail (not skip) with the reason when this machine cannot create network namespaces."""
    if os.geteuid() != 0:
        pytest.fail("network namespace tests need root (CI runs as root)")
    if shutil.which("ip") is None:
        pytest.fail("network namespace tests need iproute2's `ip` (apt-get install iproute2)")


def ip(*args: str) -> None:
    """Run `ip ARGS`, failing the test with ip's own message when it refuses."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"ip {' '.join(args)}: {result.stderr.strip()}")


@contextmanager
def network_namespace(prefix: str) -> Iterator[str]:
    """A new namespace with `lo` up; yields its name and always deletes it."""
    require_netns()
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def run_in(name: str, argv: Sequence[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run `argv` inside namespace `name` and return its output (never raises on exit status)."""
    return subprocess.run(
        ["ip", "netns", "exec", name, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def start_in(name: str, argv: Sequence[str]) -> subprocess.Popen[str]:
    """Start `argv` inside namespace `name` with pipes for stdin and stdout."""
    return subprocess.Popen(
        ["ip", "netns", "exec", name, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
