"""How talking to the API server fails: "the server said no", "we could not talk to it", and
"the stream was garbage", told apart by class (each a KubeApiError)."""

from __future__ import annotations

from typing import Any

import orjson

from extender.errors import ExtenderError

RawObject = dict[str, Any]


class KubeApiError(ExtenderError):
    """Base for every failure talking to the API server."""


class ApiStatusError(KubeApiError):
    """The server answered with an error status; `status`/`reason` come from its metav1.Status."""

    def __init__(
        self, status: int, reason: str, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    @classmethod
    def from_status(cls, raw_status: RawObject, fallback: int = 500) -> ApiStatusError:
        """From a metav1.Status body (an HTTP error body or a watch ERROR event's object)."""
        code = raw_status.get("code")
        return cls(
            code if isinstance(code, int) else fallback,
            str(raw_status.get("reason") or "Unknown"),
            str(raw_status.get("message") or "no message"),
        )

    @property
    def gone(self) -> bool:
        """410: the resourceVersion or continue token is too old; only a fresh list helps."""
        return self.status == 410


class ApiUnreachableError(KubeApiError):
    """No answer: connection refused or reset, TLS failure, timeout, or credentials unavailable."""


class WatchStreamError(KubeApiError):
    """A watch stream carried something that is not a watch event (garbage, truncated line)."""


def status_error(status: int, reason: str, body: bytes, retry_after: str) -> ApiStatusError:
    """The error an HTTP error answer stands for: its metav1.Status body if it has one (with
    the HTTP status, which is the truth when they differ), else the status and the body's start;
    `retry_after` is the Retry-After header ("" if none)."""
    seconds = float(retry_after) if retry_after.isdigit() else None
    try:
        raw_status = orjson.loads(body)
    except orjson.JSONDecodeError:
        raw_status = None
    if isinstance(raw_status, dict) and raw_status.get("kind") == "Status":
        error = ApiStatusError.from_status(raw_status, status)
        error.status = status
        error.retry_after = seconds
        return error
    text = body[:200].decode(errors="replace").strip() or "no body"
    return ApiStatusError(status, reason or "Error", text, retry_after=seconds)


def describe(error: BaseException) -> str:
    """A short reason for an error without a message of its own (a bare timeout, a reset)."""
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__


def cannot_connect(host: str, port: int | None, error: OSError) -> str:
    """Why a connection could not be opened, without the object reprs in aiohttp's text."""
    reason = error.strerror or str(error) or type(error).__name__
    return f"cannot connect to {host}:{port}: {reason}"
