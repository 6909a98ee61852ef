"""Frozen settings, from command-line flags and an optional YAML file (flags win)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from extender.core.portspec import parse_port_specs
from extender.errors import ExtenderError, PortSpecError

EVENT_LOOPS = ("uvloop", "asyncio")
"""The loops `serve` can run on (extender/eventloop.py); the first is the default."""

DEFAULT_MAX_BODY_BYTES = 128 * 1024 * 1024
"""5,000 full Node objects of ~20 KiB each, with room to spare."""


class SettingsError(ExtenderError):
    """A setting with a value that cannot work; the message names the setting."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the extender can be told. Field names double as YAML keys."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8888
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    scheduler_name: str | None = None
    """Only pods with this spec.schedulerName are checked; others pass straight through."""
    fail_open: bool = False
    """When not ready: pass every node (True) or answer Error so the scheduler retries (False)."""
    cluster_reserved_ports: str = ""
    """Ports held by host daemons on every node, in the annotation syntax."""
    protected_ports: str = ""
    """Pods holding these ports are never evicted for a port (annotation syntax)."""
    in_flight_ttl_seconds: float = 15.0
    """How long a filtered pod's tentative reservation lasts without a bind."""
    in_flight_wait_seconds: float = 0.5
    """How long a filter call may wait for an in-flight pod to bind before answering."""
    bound_reservation_ttl_seconds: float = 300.0
    """Live mode: how long a bound pod's reservation waits for the watch to show it."""
    observed_stale_seconds: float = 300.0
    """Node-agent observations older than this stop counting."""
    udp_switch_window_seconds: float = 600.0
    """How long a UDP owner change (hostPort <-> hostNetwork) lowers a node's score."""
    staleness_seconds: float = 60.0
    """Live mode: how long a watch may stay broken before the extender stops being ready."""
    header_timeout_seconds: float = 10.0
    """How long a connection may take to send a request's headers, from connecting or from its
    first byte after an idle keep-alive wait; then it is closed (slowloris)."""
    body_timeout_seconds: float = 15.0
    """How long a request's body may take to arrive once its headers are in: then 408."""
    keepalive_timeout_seconds: float = 120.0
    """How long an idle keep-alive connection stays open. Longer than Go's 90 s idle timeout,
    so the scheduler's client always closes its idle connection first (no request is ever sent
    on a connection the server is closing)."""
    max_idle_connections_per_client: int = 32
    """Idle keep-alive connections kept per client address; the longest idle are closed first."""
    max_connections: int = 512
    """Open connections at most; an idle one is closed to make room, else the new one is."""
    event_loop: str = EVENT_LOOPS[0]
    """`serve`'s event loop: uvloop (less CPU per request and per watch chunk) or asyncio."""
    api_compression: bool = False
    """Live mode: ask the API server to gzip large answers (its lists). Off by default: the API
    server then spends no CPU compressing a relist (level 1, ~15 ms per 1,000 pods) and we none
    inflating it, on cores a control plane shares; on, a relist moves ~9x fewer bytes, for an
    API server across a slow network. Watch streams are never compressed."""

    def __post_init__(self) -> None:
        for name in ("cluster_reserved_ports", "protected_ports"):
            try:
                parse_port_specs(getattr(self, name))
            except PortSpecError as error:
                raise SettingsError(f"{name}: {error}") from error
        if not 0 < self.listen_port < 65536 and self.listen_port != 0:
            raise SettingsError(f"listen_port {self.listen_port} is outside 0-65535")
        if self.max_body_bytes < 1024:
            raise SettingsError("max_body_bytes must be at least 1024")
        for name in (
            "in_flight_ttl_seconds",
            "in_flight_wait_seconds",
            "bound_reservation_ttl_seconds",
            "observed_stale_seconds",
            "udp_switch_window_seconds",
            "staleness_seconds",
        ):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must not be negative")
        for name in ("header_timeout_seconds", "body_timeout_seconds", "keepalive_timeout_seconds"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be positive")
        if self.event_loop not in EVENT_LOOPS:
            raise SettingsError(
                f"event_loop {self.event_loop!r}: choose one of {', '.join(EVENT_LOOPS)}"
            )
        if not isinstance(self.api_compression, bool):
            raise SettingsError(
                f"api_compression must be true or false, got {self.api_compression!r}"
            )
        for name in ("max_idle_connections_per_client", "max_connections"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise SettingsError(f"{name} must be a whole number of at least 1")

    @classmethod
    def from_sources(cls, file: Path | None, overrides: Mapping[str, Any]) -> Settings:
        """Settings from a YAML file (optional) with `overrides` (non-None values) on top."""
        values: dict[str, Any] = {}
        if file is not None:
            try:
                loaded = yaml.safe_load(file.read_text())
            except (OSError, yaml.YAMLError) as error:
                raise SettingsError(f"cannot read settings file {file}: {error}") from error
            if loaded is not None and not isinstance(loaded, dict):
                raise SettingsError(f"settings file {file} must hold a mapping")
            values.update({str(k).replace("-", "_"): v for k, v in (loaded or {}).items()})
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(f"unknown settings: {', '.join(unknown)}")
        try:
            return cls(**values)
        except TypeError as error:
            raise SettingsError(str(error)) from error
