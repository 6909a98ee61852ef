"""Slow and greedy clients against a real `serve` process, over raw sockets: slowloris heads,
bodies that never finish, idle connections by the dozen. Each is closed within its bound while a
well-behaved client keeps getting answers, and a kept-alive connection is never cut mid-request."""

from __future__ import annotations

import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from extender.cli import main
from tests.server.child import FILTER_BODY, SAMPLE, Child, served

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0
KEEPALIVE = 4.0
IDLE_PER_CLIENT = 4
LIMITS = {
    "header_timeout_seconds": HEADER_TIMEOUT,
    "body_timeout_seconds": BODY_TIMEOUT,
    "keepalive_timeout_seconds": KEEPALIVE,
    "max_idle_connections_per_client": IDLE_PER_CLIENT,
    "max_connections": 40,
}
SLACK = 1.5
"""Added to every bound: the machine is shared, the server's timers are not exact."""
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
FILTER_HEAD = (
    b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n"
)


@pytest.fixture(scope="module")
def child(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Child]:
    """The sample snapshot served with short connection limits."""
    with served(tmp_path_factory.mktemp("connections"), LIMITS) as running:
        yield running


def connect(child: Child) -> socket.socket:
    return socket.create_connection(("127.0.0.1", child.port), timeout=10)


def closed(sock: socket.socket) -> bool:
    """True once the server has closed `sock` (reads end of stream or a reset)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(65536, socket.MSG_PEEK) == b""
    except ConnectionError:
        return True


def drain_response(sock: socket.socket) -> bytes:
    """Read one small response (headers and a Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest


def test_slowloris_heads_are_closed_while_others_are_answered(child: Child) -> None:
    """Twenty clients sending their request head a byte every 0.2 s are all closed within the
    header timeout, none before it; a normal client is answered all along."""
    started = time.monotonic()
    socks = [connect(child) for _ in range(20)]
    head = b"POST /filter HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200
    closed_at: dict[int, float] = {}
    answered = 0
    for offset in range(len(head)):
        for index, sock in enumerate(socks):
            if index in closed_at:
                continue
            if closed(sock):
                closed_at[index] = time.monotonic() - started
                continue
            try:
                sock.send(head[offset : offset + 1])
            except ConnectionError:
                closed_at[index] = time.monotonic() - started
        if len(closed_at) == len(socks) or time.monotonic() - started > HEADER_TIMEOUT + 5:
            break
        assert child.filter()["NodeNames"] == ["ip-10-0-1-14.ec2.internal"]
        answered += 1
        time.sleep(0.2)
    for sock in socks:
        sock.close()
    assert len(closed_at) == len(socks)
    assert min(closed_at.values()) >= HEADER_TIMEOUT * 0.9
    assert max(closed_at.values()) <= HEADER_TIMEOUT + SLACK
    assert answered >= 3


def test_silent_connections_are_closed_after_the_header_timeout(child: Child) -> None:
    """Connections that never send a byte are closed once the header timeout passes."""
    socks = [connect(child) for _ in range(10)]
    time.sleep(HEADER_TIMEOUT + SLACK)
    assert all(closed(sock) for sock in socks)
    for sock in socks:
        sock.close()


def test_a_body_that_never_finishes_gets_408_and_is_closed(child: Child) -> None:
    """A body that stops arriving is answered 408 with a JSON Error once the body timeout
    passes, and the connection is closed."""
    sock = connect(child)
    started = time.monotonic()
    sock.sendall(FILTER_HEAD % 1000 + b'{"Pod": ')
    response = drain_response(sock)
    elapsed = time.monotonic() - started
    assert response.startswith(b"HTTP/1.1 408")
    assert "not received within 2 s" in orjson.loads(response.partition(b"\r\n\r\n")[2])["Error"]
    assert BODY_TIMEOUT * 0.9 <= elapsed <= BODY_TIMEOUT + SLACK
    deadline = time.monotonic() + 5
    while not closed(sock) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert closed(sock)
    sock.close()


def test_a_slow_body_within_its_timeout_is_answered(child: Child) -> None:
    """A body sent in pieces over longer than the header timeout (but within the body
    timeout) is answered normally: the header deadline never cuts a request under way."""
    sock = connect(child)
    sock.sendall(FILTER_HEAD % len(FILTER_BODY))
    pieces = [
        FILTER_BODY[i : i + len(FILTER_BODY) // 4 + 1]
        for i in range(0, len(FILTER_BODY), len(FILTER_BODY) // 4 + 1)
    ]
    for piece in pieces:
        time.sleep(HEADER_TIMEOUT * 1.5 / len(pieces))
        sock.sendall(piece)
    response = drain_response(sock)
    assert response.startswith(b"HTTP/1.1 200")
    assert orjson.loads(response.partition(b"\r\n\r\n")[2])["NodeNames"] == [
        "ip-10-0-1-14.ec2.internal"
    ]
    sock.close()


def test_a_kept_alive_connection_serves_calls_spaced_like_a_scheduler(child: Child) -> None:
    """One keep-alive connection, calls spaced longer than the header timeout (but within the
    keep-alive timeout), all answered on that same connection; idle past the keep-alive
    timeout, it is closed."""
    sock = connect(child)
    for _ in range(3):
        sock.sendall(FILTER_HEAD % len(FILTER_BODY) + FILTER_BODY)
        response = drain_response(sock)
        assert response.startswith(b"HTTP/1.1 200")
        time.sleep(HEADER_TIMEOUT * 2)
        assert not closed(sock)
    time.sleep(KEEPALIVE + SLACK - HEADER_TIMEOUT * 2)
    assert closed(sock)
    sock.close()


def test_idle_connections_per_client_are_capped(child: Child) -> None:
    """A client that leaves 30 answered keep-alive connections open keeps only the newest few:
    the longest idle are closed as it opens more; a normal client is answered meanwhile."""
    socks = []
    for _ in range(30):
        sock = connect(child)
        sock.sendall(HEALTHZ)
        assert drain_response(sock).startswith(b"HTTP/1.1 200")
        socks.append(sock)
    assert child.filter()["NodeNames"] == ["ip-10-0-1-14.ec2.internal"]
    time.sleep(0.3)
    still_open = [index for index, sock in enumerate(socks) if not closed(sock)]
    # The newest connections survive; child.filter's own connection took one idle slot too.
    assert len(still_open) <= IDLE_PER_CLIENT
    assert still_open == list(range(30 - len(still_open), 30))
    for sock in socks:
        sock.close()


def test_connections_over_the_cap_are_refused_until_room_is_made(tmp_path: Path) -> None:
    """With every slot held by connections still sending their head, a new one is closed at
    once; once the header timeout frees the slots, clients are served again."""
    with served(tmp_path, {**LIMITS, "max_connections": 10}) as capped:
        holders = [connect(capped) for _ in range(10)]
        for sock in holders:
            sock.send(b"GET /hea")
        time.sleep(0.2)
        extra = connect(capped)
        extra.settimeout(2)
        assert extra.recv(100) == b""
        time.sleep(HEADER_TIMEOUT + SLACK)
        assert capped.filter()["NodeNames"] == ["ip-10-0-1-14.ec2.internal"]
        for sock in [*holders, extra]:
            sock.close()


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("header_timeout_seconds", 0),
        ("body_timeout_seconds", -1),
        ("keepalive_timeout_seconds", 0),
        ("max_idle_connections_per_client", 0),
        ("max_connections", 2.5),
    ],
)
def test_connection_settings_that_cannot_work_are_one_line_errors(
    tmp_path: Path, setting: str, value: float, capsys: pytest.CaptureFixture[str]
) -> None:
    """A zero or negative timeout, or a cap below one, stops `serve` with one line naming it."""
    config = tmp_path / "settings.yaml"
    config.write_text(f"{setting}: {value}\n")
    assert main(["serve", "--snapshot", str(SAMPLE), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert setting in err
    assert err.count("\n") == 1


def test_the_ops_listener_has_the_same_head_deadline(tmp_path: Path) -> None:
    """`--ops-listen` (probes and /metrics on the pod IP) closes a slowloris head within the
    header timeout too, and still answers /healthz on another connection meanwhile."""
    with served(tmp_path, LIMITS, "--ops-listen", "127.0.0.1:0") as running:
        assert running.process.stdout is not None
        line = running.process.stdout.readline()
        match = re.search(r"health, readiness and metrics on http://127\.0\.0\.1:(\d+)", line)
        assert match is not None, line
        ops_port = int(match.group(1))
        slow = socket.create_connection(("127.0.0.1", ops_port), timeout=10)
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        probe = socket.create_connection(("127.0.0.1", ops_port), timeout=10)
        probe.sendall(HEALTHZ)
        assert drain_response(probe).startswith(b"HTTP/1.1 200")
        while not closed(slow):
            assert time.monotonic() - started <= HEADER_TIMEOUT + SLACK
            time.sleep(0.05)
        assert time.monotonic() - started >= HEADER_TIMEOUT * 0.9
        slow.close()
        probe.close()
