"""`serve --snapshot` as a child process, for tests that need its memory, CPU or stderr."""

from __future__ import annotations

import http.client
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from tests.conftest import REPO, start_command

SAMPLE = REPO / "config" / "samples" / "cluster.yaml"
FILTER_BODY = (REPO / "config" / "samples" / "filter-pod-identity-agent.json").read_bytes()


@dataclass
class Child:
    """A running `python -m extender serve` and what a test reads of it."""

    process: subprocess.Popen[str]
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def status_kib(self, field: str) -> int:
        """A `/proc/PID/status` figure in KiB (VmRSS, VmHWM)."""
        text = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
        assert match is not None, field
        return int(match.group(1))

    def cpu_seconds(self) -> float:
        """User + system CPU the process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / 100

    def connection(self, timeout: float = 10) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection: status, headers, body."""
        connection = self.connection()
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def filter(self) -> dict[str, Any]:
        """The sample filter call; asserts it answered 200."""
        status, _, body = self.request(
            "POST", "/filter", FILTER_BODY, {"Content-Type": "application/json"}
        )
        assert status == 200, body
        answer: dict[str, Any] = orjson.loads(body)
        return answer


@contextmanager
def served(tmp_path: Path, settings: dict[str, Any] | None = None, *extra: str) -> Iterator[Child]:
    """The sample snapshot served on an ephemeral port with `settings` as its --config file;
    stops it with SIGTERM and checks a clean exit."""
    argv = ["serve", "--snapshot", str(SAMPLE), "--listen", "127.0.0.1:0", *extra]
    if settings:
        config = tmp_path / "settings.yaml"
        config.write_text(yaml.safe_dump(settings))
        argv += ["--config", str(config)]
    process = start_command(*argv)
    assert process.stdout is not None
    banner = process.stdout.readline()
    match = re.search(r"on http://127\.0\.0\.1:(\d+)", banner)
    if match is None:
        process.kill()
        raise AssertionError(f"no banner: {banner!r} {process.communicate()[1]!r}")
    child = Child(process, int(match.group(1)))
    try:
        yield child
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
