"""`hostport-extender agent`: report the ports really held on a node, as a node annotation.

Runs on every node in the host's network namespace (a hostNetwork DaemonSet), reads the kernel's
socket tables (extender/procnet.py does the parsing) and publishes the listeners as
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
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import orjson

from extender.errors import ExtenderError
from extender.pods import OBSERVED_ANNOTATION, OBSERVED_AT_ANNOTATION
from extender.portspec import PortSpec, format_port_specs, merge_port_specs
from extender.procnet import (
    Listener,
    ProcNetError,
    parse_inet_table,
    parse_port_range,
    parse_sctp_eps,
    select_listeners,
)

log = logging.getLogger(__name__)

OBSERVED = OBSERVED_ANNOTATION
OBSERVED_AT = OBSERVED_AT_ANNOTATION
DEFAULT_MAX_ANNOTATION_BYTES = 64 * 1024
"""A quarter of the 256 KiB that ALL annotations of a node share (API validation limit)."""

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


@dataclass(frozen=True, slots=True)
class ApiConnection:
    """Where the API server is and how to authenticate, as the official client resolved it."""

    server: str
    ssl: ssl.SSLContext | bool
    authorization: Callable[[], str | None]
    """The Authorization header value, asked before every request (tokens rotate)."""


class NodeApi:
    """`PATCH /api/v1/nodes/{name}` with a JSON merge patch of the annotations, over aiohttp."""

    def __init__(self, session: aiohttp.ClientSession, connection: ApiConnection) -> None:
        self._session = session
        self._connection = connection

    async def patch_node_annotations(self, node: str, annotations: dict[str, str]) -> None:
        """Merge `annotations` into the node; PublishError with the API's message otherwise."""
        url = f"{self._connection.server.rstrip('/')}/api/v1/nodes/{quote(node, safe='')}"
        headers = {"Content-Type": "application/merge-patch+json", "Accept": "application/json"}
        authorization = self._connection.authorization()
        if authorization:
            headers["Authorization"] = authorization
        body = orjson.dumps({"metadata": {"annotations": annotations}})
        try:
            async with self._session.patch(
                url,
                data=body,
                headers=headers,
                ssl=self._connection.ssl,
                timeout=aiohttp.ClientTimeout(total=15),
            ) as response:
                if response.status < 300:
                    return
                detail = _status_message(await response.read())
        except (aiohttp.ClientError, TimeoutError) as error:
            raise PublishError(f"PATCH node {node!r}: {error or type(error).__name__}") from error
        raise PublishError(f"PATCH node {node!r}: HTTP {response.status}: {detail}")


def _status_message(body: bytes) -> str:
    """The `message` of a metav1.Status body, else the start of the body."""
    try:
        raw_status: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(raw_status, dict) and isinstance(raw_status.get("message"), str):
        return str(raw_status["message"])
    return body[:200].decode("utf-8", "replace")


def load_api_connection(kubeconfig: str | None) -> ApiConnection:
    """Credentials from `kubeconfig` (or $KUBECONFIG), else the pod's service account.

    Only this function touches the official client, and only for its config loaders.
    """
    from kubernetes import client, config  # noqa: PLC0415 (slow import, only for the loop)

    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    try:
        if path:
            # The client is untyped; both loaders fill `configuration` in place.
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path, client_configuration=configuration
            )
        else:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
    except (config.ConfigException, OSError) as error:
        where = f"kubeconfig {path}" if path else "in-cluster service account"
        raise AgentError(f"cannot load API credentials from {where}: {error}") from error
    context: ssl.SSLContext | bool = False
    if configuration.verify_ssl and str(configuration.host).startswith("https"):
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)

    def authorization() -> str | None:
        # Recent clients file the token under "BearerToken", older ones under "authorization".
        value = configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
        return str(value) if value else None

    return ApiConnection(str(configuration.host), context, authorization)


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
    parser.add_argument("--kubeconfig", help="default: $KUBECONFIG, else the service account")
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
        from extender.conntrack import ConntrackFlusher  # noqa: PLC0415 (pyroute2 is slow)

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
    connection = load_api_connection(args.kubeconfig)
    hooks: list[CycleHook] = []
    if args.flush_stale_udp_conntrack:
        from extender.conntrack import ConntrackFlusher  # noqa: PLC0415 (pyroute2 is slow)

        flusher = ConntrackFlusher()
        await flusher.check()
        hooks.append(flusher)
    async with aiohttp.ClientSession() as session:
        patch = NodeApi(session, connection).patch_node_annotations
        publisher = Publisher(settings.node, patch, refresh=settings.refresh)
        await run_loop(settings, publisher, hooks=hooks)
    return 0
