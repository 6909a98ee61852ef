"""`hostport-extender agent`: report the ports really held on a node, as a node annotation.

Runs on every node in the host's network namespace (a hostNetwork DaemonSet), reads the kernel's
socket tables (extender/agent/procnet.py does the parsing) and publishes the listeners as
`hostports.dev/observed` in the `PORT[-END][/PROTO][@IP]` syntax, with `hostports.dev/observed-at`.
The extender turns those into node-level claims; this module never decides about scheduling.
The API server is reached only through a `NodePatcher`, so publishing can be tested alone.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import orjson

from extender.agent.procnet import (
    Listener,
    ProcNetError,
    parse_inet_table,
    parse_port_range,
    parse_sctp_eps,
    select_listeners,
)
from extender.core.pods import OBSERVED_ANNOTATION, OBSERVED_AT_ANNOTATION
from extender.core.portspec import PortSpec, format_port_specs, merge_port_specs
from extender.errors import ExtenderError

if TYPE_CHECKING:  # the API client imports `kubernetes` (slow); --once needs neither
    from extender.kube.kubeapi import KubeApi

log = logging.getLogger(__name__)

OBSERVED = OBSERVED_ANNOTATION
OBSERVED_AT = OBSERVED_AT_ANNOTATION
DEFAULT_MAX_ANNOTATION_BYTES = 64 * 1024
"""A quarter of the 256 KiB that ALL annotations of a node share (API validation limit)."""

PATCH_TIMEOUT = 15.0
"""Seconds one node PATCH may take before it counts as failed (and is retried with backoff)."""

NodePatcher = Callable[[str, dict[str, str]], Awaitable[None]]
"""Merge `annotations` into node `name`'s metadata; raises PublishError when the API refuses."""


class AgentError(ExtenderError):
    """The agent cannot do its job (unreadable /proc, no node name, no API credentials)."""


class PublishError(AgentError):
    """One PATCH of the node failed; the loop backs off and retries."""


_INET_TABLES = (("net/tcp", "TCP"), ("net/tcp6", "TCP"), ("net/udp", "UDP"), ("net/udp6", "UDP"))


def _read_text(path: Path) -> str | None:
    """The file's text, or None when it does not exist (IPv6 disabled, no SCTP module)."""
    try:
        return path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise AgentError(f"cannot read {path}: {error}") from error


def read_listeners(proc: Path, *, include_ephemeral_udp: bool = False) -> frozenset[Listener]:
    """The listeners of the network namespace whose `/proc` is `proc` (normally our own).

    /proc/net follows the reading thread's network namespace, which is why the DaemonSet
    runs with hostNetwork: true and why processes in other namespaces (ordinary pods) are
    invisible here.
    """
    found: list[Listener] = []
    try:
        for name, protocol in _INET_TABLES:
            text = _read_text(proc / name)
            if text is not None:
                found.extend(parse_inet_table(text, protocol, source=str(proc / name)))
        sctp = _read_text(proc / "net/sctp/eps")
        if sctp is not None:
            found.extend(parse_sctp_eps(sctp, source=str(proc / "net/sctp/eps")))
        ephemeral = None
        if not include_ephemeral_udp:
            range_text = _read_text(proc / "sys/net/ipv4/ip_local_port_range")
            if range_text is None:
                raise AgentError(f"{proc}/sys/net/ipv4/ip_local_port_range does not exist")
            reserved = _read_text(proc / "sys/net/ipv4/ip_local_reserved_ports") or ""
            ephemeral = parse_port_range(range_text, reserved)
    except ProcNetError as error:
        raise AgentError(str(error)) from error
    return select_listeners(found, ephemeral)


def listeners_json(listeners: Iterable[Listener]) -> bytes:
    """`[{"port": 80, "protocol": "TCP", "ip": "169.254.170.23"}, ...]`, sorted, one line."""
    rows = [
        {"port": item.port, "protocol": item.protocol, "ip": item.ip}
        for item in sorted(listeners, key=lambda item: (item.port, item.protocol, item.ip))
    ]
    return orjson.dumps(rows)


@dataclass(frozen=True, slots=True)
class Observed:
    """The annotation text, and how it was coarsened to fit (None: exact)."""

    text: str
    coarsened: str | None = None


def encode_observed(
    listeners: Iterable[Listener], max_bytes: int = DEFAULT_MAX_ANNOTATION_BYTES
) -> Observed:
    """The `hostports.dev/observed` value, at most `max_bytes` long.

    When the exact list is too long it is coarsened towards claiming MORE, never less: first
    every address becomes the wildcard, then gaps between ports are bridged, doubling the
    bridged width until the text fits. A scheduler reading it may then keep a pod off a port
    that is in fact free, but never put one on a port that is taken.
    """
    specs = [PortSpec(item.protocol, item.port, item.port, item.ip) for item in listeners]
    text = format_port_specs(specs)
    if len(text) <= max_bytes:
        return Observed(text)
    wide = merge_port_specs(PortSpec(spec.protocol, spec.first, spec.last) for spec in specs)
    text = format_port_specs(wide)
    if len(text) <= max_bytes:
        return Observed(text, "addresses widened to all addresses")
    gap = 1
    while True:
        text = format_port_specs(_bridge(wide, gap))
        if len(text) <= max_bytes or gap > 65535:
            return Observed(text, f"addresses widened, gaps of up to {gap} ports claimed")
        gap *= 2


def _bridge(specs: tuple[PortSpec, ...], gap: int) -> list[PortSpec]:
    """Join same-protocol ranges separated by at most `gap` free ports (specs are merged)."""
    bridged: list[PortSpec] = []
    for spec in specs:
        if bridged:
            previous = bridged[-1]
            if previous.protocol == spec.protocol and spec.first - previous.last - 1 <= gap:
                bridged[-1] = PortSpec(spec.protocol, previous.first, max(previous.last, spec.last))
                continue
        bridged.append(spec)
    return bridged


def rfc3339_now() -> str:
    """The current UTC time as Kubernetes writes timestamps: `2026-11-24T21:30:00Z`."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Publisher:
    """Patches the node only when the observed text changed, or to refresh `observed-at`.

    The extender stops trusting observations older than its staleness bound (default 5 min), so
    an unchanged set is re-published every `refresh` seconds: without it a quiet node's
    listeners would silently stop counting.
    """

    def __init__(
        self,
        node: str,
        patch: NodePatcher,
        *,
        refresh: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._node = node
        self._patch = patch
        self._refresh = refresh
        self._clock = clock
        self._last_text: str | None = None
        self._last_time = 0.0

    async def publish(self, observed: Observed, observed_at: str) -> bool:
        """Patch if needed; True when a patch was sent and accepted. Raises PublishError."""
        now = self._clock()
        fresh = now - self._last_time < self._refresh
        if observed.text == self._last_text and fresh:
            return False
        await self._patch(self._node, {OBSERVED: observed.text, OBSERVED_AT: observed_at})
        if observed.text != self._last_text:
            shown = observed.text if len(observed.text) <= 300 else observed.text[:300] + "..."
            log.info(
                "published %s on node %s (%d bytes): %s",
                OBSERVED,
                self._node,
                len(observed.text),
                shown,
            )
        self._last_text = observed.text
        self._last_time = now
        return True


def api_patcher(api: KubeApi) -> NodePatcher:
    """A NodePatcher over the project's API client: one JSON merge patch of the annotations.

    Every API failure (an error status, no answer, credentials that cannot be refreshed, an
    answer that is not JSON) becomes a PublishError carrying the API's own message, so the loop
    backs off and retries instead of crashing.
    """
    from extender.kube.kubeapi import ApiStatusError, KubeApiError  # noqa: PLC0415 (loop mode only)

    async def patch(node: str, annotations: dict[str, str]) -> None:
        raw_patch: dict[str, Any] = {"metadata": {"annotations": annotations}}
        try:
            await api.patch_node_metadata(node, raw_patch)
        except ApiStatusError as error:
            raise PublishError(
                f"PATCH node {node!r}: HTTP {error.status}: {error.message}"
            ) from error
        except KubeApiError as error:
            # The client's text starts with the method and path; the node name says the same.
            reason = str(error).removeprefix(f"PATCH /api/v1/nodes/{quote(node, safe='')}: ")
            raise PublishError(f"PATCH node {node!r}: {reason}") from error

    return patch


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """What the publishing loop needs; built from the command line."""

    node: str
    proc: Path = Path("/proc")
    include_ephemeral_udp: bool = False
    interval: float = 30.0
    refresh: float = 150.0
    max_annotation_bytes: int = DEFAULT_MAX_ANNOTATION_BYTES
    backoff_initial: float = 1.0
    backoff_max: float = 300.0


class CycleHook(Protocol):
    """Something to do with each observation besides publishing it (the conntrack flusher)."""

    async def observe(self, listeners: frozenset[Listener]) -> object:
        """Called once per cycle, before publishing; its errors are logged, never fatal."""


async def run_loop(
    settings: LoopSettings,
    publisher: Publisher,
    *,
    hooks: Iterable[CycleHook] = (),
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
    cycles: int | None = None,
) -> None:
    """Observe, publish, sleep a jittered interval; on API errors retry with backoff.

    Jitter (±20 %) keeps thousands of agents started together by a DaemonSet rollout from
    patching in lock-step. Backoff doubles from `backoff_initial` to `backoff_max` and resets
    after a success. `cycles` bounds the loop (tests); None runs until cancelled.
    """
    rng = rng or random.Random()
    hook_list = list(hooks)
    delay = settings.backoff_initial
    done = 0
    while cycles is None or done < cycles:
        done += 1
        listeners = read_listeners(
            settings.proc, include_ephemeral_udp=settings.include_ephemeral_udp
        )
        for hook in hook_list:
            try:
                await hook.observe(listeners)
            except ExtenderError as error:
                log.error("%s", error)
        observed = encode_observed(listeners, settings.max_annotation_bytes)
        if observed.coarsened:
            log.warning(
                "%d listeners do not fit in %d bytes: %s",
                len(listeners),
                settings.max_annotation_bytes,
                observed.coarsened,
            )
        try:
            await publisher.publish(observed, rfc3339_now())
        except PublishError as error:
            wait = delay * rng.uniform(0.5, 1.0)
            log.warning("%s; retrying in %.1f s", error, wait)
            delay = min(delay * 2, settings.backoff_max)
        else:
            delay = settings.backoff_initial
            wait = settings.interval * rng.uniform(0.8, 1.2)
        await sleep(wait)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `agent` on the CLI's subparsers (`subparsers.add_parser`)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "agent",
        help="report the ports that listen on this node (run as a hostNetwork DaemonSet)",
        description="Read this network namespace's socket tables and print them (--once) or "
        f"publish them as the node annotations {OBSERVED} and {OBSERVED_AT}.",
    )
    parser.add_argument(
        "--once", action="store_true", help="print what listens here and exit (no cluster)"
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=("json", "annotation"),
        default="json",
        help="--once output: a JSON list, or the annotation text (default json)",
    )
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME", ""), help="$NODE_NAME")
    parser.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="kubeconfig (default: in-cluster, else $KUBECONFIG, ~/.kube/config)",
    )
    parser.add_argument("--context", help="kubeconfig context (default: current)")
    parser.add_argument("--interval", type=_positive, default=30.0, help="seconds (default 30)")
    parser.add_argument(
        "--refresh",
        type=_positive,
        default=150.0,
        help=f"re-publish an unchanged set after this many seconds to keep {OBSERVED_AT} "
        "fresh; keep it under the extender's staleness bound (default 150)",
    )
    parser.add_argument(
        "--include-ephemeral-udp",
        action="store_true",
        help="also report UDP sockets inside ip_local_port_range (normally client noise)",
    )
    parser.add_argument(
        "--max-annotation-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_ANNOTATION_BYTES,
        help=f"coarsen the annotation beyond this size (default {DEFAULT_MAX_ANNOTATION_BYTES})",
    )
    parser.add_argument(
        "--flush-stale-udp-conntrack",
        action="store_true",
        help="delete conntrack entries that still DNAT a UDP port to an old pod after a host "
        "process started listening on it (needs CAP_NET_ADMIN)",
    )
    parser.add_argument("--proc", type=Path, default=Path("/proc"), help=argparse.SUPPRESS)
    parser.set_defaults(run=run)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of bytes")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def run(args: argparse.Namespace) -> int:
    """Entry point of `hostport-extender agent`; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.once:
            return asyncio.run(_once(args))
        if not args.node_name:
            raise AgentError("no node name: pass --node-name or set NODE_NAME")
        return asyncio.run(_serve(args))
    except ExtenderError as error:  # AgentError, ConntrackError: reasons meant for the user
        print(f"hostport-extender agent: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _once(args: argparse.Namespace) -> int:
    listeners = read_listeners(args.proc, include_ephemeral_udp=args.include_ephemeral_udp)
    if args.flush_stale_udp_conntrack:
        from extender.agent.conntrack import ConntrackFlusher  # noqa: PLC0415 (pyroute2 is slow)

        flusher = ConntrackFlusher()
        await flusher.check()
        await flusher.observe(listeners)  # logs each flush on stderr
    if args.output == "json":
        sys.stdout.buffer.write(listeners_json(listeners) + b"\n")
    else:
        print(encode_observed(listeners, args.max_annotation_bytes).text)
    return 0


async def _serve(args: argparse.Namespace) -> int:
    settings = LoopSettings(
        node=args.node_name,
        proc=args.proc,
        include_ephemeral_udp=args.include_ephemeral_udp,
        interval=args.interval,
        refresh=args.refresh,
        max_annotation_bytes=args.max_annotation_bytes,
    )
    # Imported here so that --once never loads the `kubernetes` package.
    from extender.kube.kubeapi import KubeApi  # noqa: PLC0415
    from extender.kube.kubeauth import load_connection  # noqa: PLC0415

    connection = load_connection(args.kubeconfig, args.context)
    hooks: list[CycleHook] = []
    if args.flush_stale_udp_conntrack:
        from extender.agent.conntrack import ConntrackFlusher  # noqa: PLC0415 (pyroute2 is slow)

        flusher = ConntrackFlusher()
        await flusher.check()
        hooks.append(flusher)
    log.info(
        "publishing the listeners of node %s to %s (%s)",
        settings.node,
        connection.server,
        connection.source,
    )
    async with KubeApi(connection, request_timeout=PATCH_TIMEOUT, component="agent") as api:
        publisher = Publisher(settings.node, api_patcher(api), refresh=settings.refresh)
        await run_loop(settings, publisher, hooks=hooks)
    return 0
