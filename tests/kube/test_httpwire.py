"""The watch's HTTP/1.1 response reader: however the bytes are split, the same head and body."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.kube.httpwire import MAX_HEAD_BYTES, HttpWireError, ResponseReader

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"


def chunked(*pieces: bytes, extension: bytes = b"", trailer: bytes = b"") -> bytes:
    framed = b"".join(b"%x%s\r\n%s\r\n" % (len(p), extension, p) for p in pieces)
    return HEAD + b"\r\n" + framed + b"0\r\n" + trailer + b"\r\n"


def read(data: bytes, cuts: list[int]) -> tuple[ResponseReader, bytes]:
    """Feed `data` cut at the given offsets; the reader and the body it gave."""
    reader, body, at = ResponseReader(), b"", 0
    for cut in [*sorted(cuts), len(data)]:
        body += reader.feed(data[at:cut])
        at = cut
    return reader, body


LINES = [b'{"type":"ADDED","object":{"metadata":{"name":"a"}}}\n', b"x" * 300 + b"\n", b"\n"]


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(LINES), min_size=0, max_size=5),
    cuts=st.lists(st.integers(0, 1500), max_size=8),
    extension=st.sampled_from([b"", b";name=value"]),
    trailer=st.sampled_from([b"", b"X-Trailer: 1\r\n"]),
)
def test_a_chunked_body_comes_out_whole_however_the_bytes_are_cut(
    pieces: list[bytes], cuts: list[int], extension: bytes, trailer: bytes
) -> None:
    data = chunked(*pieces, extension=extension, trailer=trailer)
    reader, body = read(data, [cut for cut in cuts if cut <= len(data)])
    assert body == b"".join(pieces)
    assert reader.finished
    assert reader.head is not None
    assert reader.head.status == 200
    assert reader.head.headers["content-type"] == "application/json"


def test_every_single_cut_of_a_small_response_reads_the_same() -> None:
    data = chunked(b"abc\n", b"de")
    for cut in range(len(data) + 1):
        reader, body = read(data, [cut])
        assert (body, reader.finished) == (b"abc\nde", True), cut


def test_a_content_length_body_ends_at_its_length_and_one_without_at_the_close() -> None:
    answer = b'HTTP/1.1 410 Gone\r\nContent-Length: 5\r\nRetry-After: 3\r\n\r\n{"a":'
    reader, body = read(answer, [20, 60])
    assert (body, reader.finished) == (b'{"a":', True)
    assert reader.head is not None
    assert (reader.head.status, reader.head.reason) == (410, "Gone")
    assert reader.head.headers["retry-after"] == "3"
    reader, body = read(b"HTTP/1.1 500 Oops\r\n\r\nsomething broke", [30])
    assert (body, reader.finished) == (b"something broke", False)
    reader.eof()
    assert reader.finished


def test_repeated_headers_are_joined_and_names_are_case_free() -> None:
    head = b"HTTP/1.1 200 OK\r\nWarning: a\r\nWARNING: b\r\nContent-Length: 0\r\n\r\n"
    reader, _ = read(head, [])
    assert reader.head is not None
    assert reader.head.headers == {"warning": "a, b", "content-length": "0"}
    assert reader.finished


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.1 status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "not a header line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "not a Content-Length"),
        (HEAD + b"\r\nzz\r\n", "not a chunk size"),
        (HEAD + b"\r\n0x3\r\nabc\r\n", "not a chunk size"),
        (HEAD + b"\r\n3\r\nabcd\r\n", "longer than its size"),
        (chunked(b"ab") + b"more", "after the end"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_HEAD_BYTES, "too long"),
    ],
)
def test_bytes_that_are_not_an_exact_response_raise(data: bytes, message: str) -> None:
    with pytest.raises(HttpWireError, match=message):
        read(data, [])


@pytest.mark.parametrize("cut", [0, 10, len(HEAD) + 5, len(chunked(b"abc")) - 3])
def test_a_connection_that_ends_before_the_response_does_is_an_error(cut: int) -> None:
    reader, _ = read(chunked(b"abc")[:cut], [])
    with pytest.raises(HttpWireError, match="closed before"):
        reader.eof()
