"""Clients that hang up mid-body, seen in a real `serve` process's log: one debug line each."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import orjson

from tests.server.child import served

HEAD = b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def test_hang_ups_mid_body_log_one_debug_line_each(tmp_path: Path) -> None:
    """Three clients that hang up mid-body (sized and chunked) leave one debug line each and no
    traceback or error; the server answers normally afterwards."""
    with served(tmp_path, None, "--log-level", "debug", "--log-format", "text") as child:
        bodies = [
            b"Content-Length: 100000\r\n\r\n" + b'{"Pod": {',
            b"Content-Length: 50\r\n\r\n",
            b"Transfer-Encoding: chunked\r\n\r\n400\r\n" + b'{"Pod": {',
        ]
        for rest in bodies:
            sock = socket.create_connection(("127.0.0.1", child.port), timeout=5)
            sock.sendall(HEAD + rest)
            time.sleep(0.2)
            sock.close()
        time.sleep(0.3)
        assert child.filter()["NodeNames"] == ["ip-10-0-1-14.ec2.internal"]
    assert child.process.stderr is not None
    log = child.process.stderr.read()
    lines = [line for line in log.splitlines() if "went away mid-body" in line]
    assert len(lines) == 3, log
    assert all(" DEBUG " in line for line in lines)
    assert "Traceback" not in log
    assert " ERROR " not in log


def test_a_malformed_chunked_body_is_a_400(tmp_path: Path) -> None:
    """A chunked body whose chunk size is not hexadecimal answers a one-line JSON 400."""
    with served(tmp_path) as child:
        sock = socket.create_connection(("127.0.0.1", child.port), timeout=5)
        sock.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):  # the server closes after an error
            response += chunk
        sock.close()
        head, _, answer = response.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"400", response
        assert b"Content-Type: application/json" in head
        error = orjson.loads(answer)["Error"]
        assert error.startswith("Invalid character in chunk size")
        assert "\n" not in error
        assert child.filter()["NodeNames"] == ["ip-10-0-1-14.ec2.internal"]
    assert child.process.stderr is not None
    assert "Traceback" not in child.process.stderr.read()
