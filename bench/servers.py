"""Start and stop the servers under test as separate processes on loopback.

Each server is told to listen on 127.0.0.1:0 and prints its URL when it listens; we read the port
from that line and then poll GET /healthz until it answers 200, as a deployment's probe would.
We stop only the processes we started, by their Popen handle.
"""

from __future__ import annotations

import http.client
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_URL = re.compile(rb"http://(127\.0\.0\.1|\[::1\]):(\d+)")


class ServerError(Exception):
    """A server under test did not start, or died."""


@dataclass(frozen=True, slots=True)
class Server:
    """A running server process and where it listens."""

    name: str
    process: subprocess.Popen[bytes]
    host: str
    port: int
    log: Path
    startup_s: float
    """From spawning the process to the first 200 from /healthz (includes loading the snapshot)."""


def memory_mb(server: Server) -> tuple[float, float]:
    """(resident now, peak resident) of a server process, from /proc, in MB."""
    values = {"VmRSS:": 0.0, "VmHWM:": 0.0}
    with open(f"/proc/{server.process.pid}/status") as status:
        for line in status:
            key = line.split(maxsplit=1)[0]
            if key in values:
                values[key] = int(line.split()[1]) * 1024 / 1e6
    return values["VmRSS:"], values["VmHWM:"]


def ours_command(snapshot: Path) -> list[str]:
    """Our extender, exactly as a user runs it from the virtualenv."""
    executable = Path(sys.executable).parent / "hostport-extender"
    return [str(executable), "serve", "--snapshot", str(snapshot), "--listen", "127.0.0.1:0"]


def profiled_command(snapshot: Path, out: Path) -> list[str]:
    """Our server built the same way, serving under pyinstrument (see bench/profile_server.py)."""
    return [
        sys.executable,
        "-m",
        "bench.profile_server",
        "--snapshot",
        str(snapshot),
        "--listen",
        "127.0.0.1:0",
        "--out",
        str(out),
    ]


def null_command() -> list[str]:
    """The baseline null extender."""
    return [sys.executable, "-m", "bench.null_extender", "--listen", "127.0.0.1:0"]


def _healthy(host: str, port: int) -> bool:
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(name: str, command: Sequence[str], log_dir: Path, timeout_s: float = 300.0) -> Server:
    """Spawn `command`, wait until it is healthy, and return it; ServerError if it never is."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = started + timeout_s
    address: tuple[str, int] | None = None
    try:
        while time.perf_counter() < deadline:
            if process.poll() is not None:
                raise ServerError(
                    f"{name} exited with status {process.returncode} before it was ready:\n"
                    + _tail(log)
                )
            if address is None:
                # The last URL: a live-mode banner names the API server's before its own.
                found = _URL.findall(log.read_bytes())
                if found:
                    address = (found[-1][0].decode().strip("[]"), int(found[-1][1]))
            if address is not None and _healthy(*address):
                elapsed = time.perf_counter() - started
                return Server(name, process, address[0], address[1], log, elapsed)
            time.sleep(0.05)
        raise ServerError(f"{name} was not healthy after {timeout_s:.0f} s:\n" + _tail(log))
    except BaseException:
        stop_process(process)
        raise


STOP_GRACE_S = 10.0
"""How long a server has to exit after SIGTERM before it is killed."""
PROFILED_STOP_GRACE_S = 600.0
"""The same for a server under pyinstrument (bench/profile_server.py), which renders its profile
after SIGTERM: minutes for a busy run, killed half-written within 10 s."""


def stop_process(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM, then SIGKILL if it has not exited in `grace_s`."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running(
    name: str, command: Sequence[str], log_dir: Path, *, stop_grace_s: float = STOP_GRACE_S
) -> Iterator[Server]:
    """A started server for the duration of the block, stopped afterwards whatever happens."""
    server = start(name, command, log_dir)
    try:
        yield server
    finally:
        stop_process(server.process, stop_grace_s)
