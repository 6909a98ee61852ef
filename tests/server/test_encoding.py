"""Content-Encoding over a real `serve` process: only identity is accepted, nothing is inflated."""

from __future__ import annotations

import functools
import gzip
import zlib
from pathlib import Path

import orjson
import pytest

from tests.server.child import FILTER_BODY, served

JSON = {"Content-Type": "application/json"}
BOMB_MIB = 256


@functools.cache
def gzip_bomb() -> bytes:
    """256 MiB of zeros, gzipped: about 255 KB on the wire."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(BOMB_MIB)) + packer.flush()


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", FILTER_BODY),
        ("gzip", gzip.compress(FILTER_BODY)),
        ("deflate", zlib.compress(FILTER_BODY)),
        ("br", FILTER_BODY),
        ("zstd", FILTER_BODY),
        ("x-unknown", FILTER_BODY),
        ("identity, gzip", gzip.compress(FILTER_BODY)),
    ],
)
def test_declared_encodings_are_refused_with_415(
    tmp_path: Path, encoding: str, body: bytes
) -> None:
    """Any Content-Encoding but identity answers 415 with a one-line JSON Error, never 500."""
    with served(tmp_path) as child:
        status, headers, answer = child.request(
            "POST", "/filter", body, {**JSON, "Content-Encoding": encoding}
        )
        assert status == 415
        assert headers["Content-Type"].startswith("application/json")
        error = orjson.loads(answer)["Error"]
        assert "Content-Encoding" in error
        assert "identity" in error
        assert "\n" not in error
        assert child.filter()["NodeNames"] == ["ip-10-0-1-14.ec2.internal"]


@pytest.mark.parametrize("encoding", ["identity", "IDENTITY", None])
def test_identity_or_no_encoding_is_served(tmp_path: Path, encoding: str | None) -> None:
    """A plain body, with or without `Content-Encoding: identity`, is answered as usual."""
    extra = {"Content-Encoding": encoding} if encoding else {}
    with served(tmp_path) as child:
        status, _, answer = child.request("POST", "/filter", FILTER_BODY, {**JSON, **extra})
        assert status == 200
        assert orjson.loads(answer)["NodeNames"] == ["ip-10-0-1-14.ec2.internal"]


def test_gzip_bomb_costs_neither_memory_nor_cpu(tmp_path: Path) -> None:
    """A 255 KB gzip bomb (256 MiB inflated) is refused with 415; the server's resident memory
    stays within 64 MB of idle and it burns no CPU after answering."""
    bomb = gzip_bomb()
    with served(tmp_path) as child:
        child.filter()
        idle_kib = child.status_kib("VmRSS")
        cpu_before = child.cpu_seconds()
        for _ in range(5):
            status, _, answer = child.request(
                "POST", "/filter", bomb, {**JSON, "Content-Encoding": "gzip"}
            )
            assert status == 415, answer
        assert child.filter()["NodeNames"] == ["ip-10-0-1-14.ec2.internal"]
        assert child.status_kib("VmHWM") - idle_kib < 64 * 1024
        assert child.cpu_seconds() - cpu_before < 2.0
