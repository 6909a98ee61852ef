"""An HTTP/1.1 response read incrementally from the bytes as they arrive: pure, no I/O.

The watch reads its response in the transport's own callback (extender/kube/watch.py) rather
than through aiohttp's stream reader, future and task, which cost ~30-60 us of CPU every time
an event wakes the process (most watch events arrive alone). This is the part of HTTP that
needs: the status line and headers, then the body unframed from chunked transfer coding, a
Content-Length, or the connection's end. Anything it cannot read exactly raises HttpWireError.
"""

from __future__ import annotations

from typing import NamedTuple

MAX_HEAD_BYTES = 64 * 1024
"""Longest status line plus headers accepted (the API server's are well under 1 kB)."""
_MAX_CONTROL_LINE = 4096
"""Longest chunk-size line or trailer line accepted."""


class HttpWireError(Exception):
    """The bytes are not an HTTP/1.1 response this reader can unframe exactly."""


class ResponseHead(NamedTuple):
    status: int
    reason: str
    headers: dict[str, str]
    """Names in lower case; a repeated header's values joined with ", "."""


_HEX_DIGITS = b"0123456789abcdefABCDEF"
_HEAD, _SIZE, _DATA, _DATA_END, _TRAILER, _LENGTH, _UNTIL_CLOSE, _DONE = range(8)


class ResponseReader:
    """Feed it the connection's bytes in order; it returns the body's bytes as they come.

    `head` is set once the status line and headers are complete, `finished` once the body is
    (a chunked body's last chunk and trailers, a Content-Length's last byte; a body that runs
    to the connection's end finishes at `eof()`).
    """

    __slots__ = ("_left", "_pending", "_state", "head")

    def __init__(self) -> None:
        self.head: ResponseHead | None = None
        self._state = _HEAD
        self._pending = b""
        """The start of a head, chunk-size line or trailer whose end has not arrived yet."""
        self._left = 0
        """Bytes of the current chunk (or of the Content-Length body) still to come."""

    @property
    def finished(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> bytes:
        """The body bytes in `data` (b"" if none); raises HttpWireError on a framing error."""
        if self._pending:
            data = self._pending + data
            self._pending = b""
        state = self._state
        if state == _DATA and len(data) < self._left:  # the common case: part of one chunk
            self._left -= len(data)
            return data
        body: list[bytes] = []
        at = 0
        size = len(data)
        while at < size:
            if state in (_DATA, _LENGTH):
                end = min(size, at + self._left)
                body.append(data[at:end])
                self._left -= end - at
                at = end
                if self._left == 0:
                    state = _DATA_END if state == _DATA else _DONE
            elif state == _UNTIL_CLOSE:
                body.append(data[at:])
                at = size
            elif state == _DONE:
                raise HttpWireError("bytes after the end of the response")
            else:
                line_end = data.find(b"\r\n\r\n" if state == _HEAD else b"\r\n", at)
                if line_end < 0:
                    self._pending = data[at:]
                    limit = MAX_HEAD_BYTES if state == _HEAD else _MAX_CONTROL_LINE
                    if len(self._pending) > limit:
                        raise HttpWireError("a header or chunk line is too long")
                    break
                line = data[at:line_end]
                if state == _HEAD:
                    at = line_end + 4
                    state = self._read_head(line)
                elif state == _SIZE:
                    at = line_end + 2
                    self._left = _chunk_size(line)
                    state = _DATA if self._left else _TRAILER
                elif state == _DATA_END:
                    if line_end != at:
                        raise HttpWireError("a chunk is longer than its size")
                    at = line_end + 2
                    state = _SIZE
                else:  # _TRAILER: header lines until an empty one
                    at = line_end + 2
                    if not line:
                        state = _DONE
        self._state = state
        return body[0] if len(body) == 1 else b"".join(body)

    def eof(self) -> None:
        """The connection ended: a body that runs to the end is complete, any other is cut."""
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE
        elif self._state != _DONE:
            raise HttpWireError("the connection closed before the response's end")

    def _read_head(self, head: bytes) -> int:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise HttpWireError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise HttpWireError(f"not a header line: {line[:80]!r}")
            key = name.decode("latin-1").lower()
            text = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.head = ResponseHead(
            int(parts[1]), parts[2].decode("latin-1") if len(parts) > 2 else "", headers
        )
        coding = headers.get("transfer-encoding", "").lower()
        if coding:
            if coding != "chunked":
                raise HttpWireError(f"unsupported Transfer-Encoding {coding!r}")
            return _SIZE
        length = headers.get("content-length")
        if length is None:
            return _UNTIL_CLOSE
        if not length.isdigit():
            raise HttpWireError(f"not a Content-Length: {length!r}")
        self._left = int(length)
        return _LENGTH if self._left else _DONE


def _chunk_size(line: bytes) -> int:
    digits = line.split(b";", 1)[0].strip()
    if not digits or len(digits) > 16 or digits.strip(_HEX_DIGITS):
        raise HttpWireError(f"not a chunk size: {line[:40]!r}")
    return int(digits, 16)
