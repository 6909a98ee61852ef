"""`hostport-extender serve`: run the extender over a snapshot (or, in live mode, a cluster)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from aiohttp import web

from extender import eventloop, logs
from extender.core.cluster import Cluster
from extender.errors import ExtenderError
from extender.heap import loading
from extender.kube.snapshot import load_into
from extender.server import tls
from extender.server.app import create_app
from extender.server.binding import SnapshotBinder
from extender.server.connections import GuardedAppRunner
from extender.server.metrics import new_metrics
from extender.server.ops import create_ops_app
from extender.server.readiness import AlwaysReady, Readiness
from extender.settings import Settings

log = logging.getLogger(__name__)

SAMPLE_REQUEST = Path("config/samples/filter-pod-identity-agent.json")

LISTEN_FIELDS = ("listen_host", "listen_port")
"""The settings that `--listen HOST:PORT` gives together."""


def add_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="serve the extender protocol over HTTP",
        description="Serve filter/prioritize/bind/preempt for a kube-scheduler.",
    )
    parser.add_argument(
        "--snapshot",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="load Nodes and Pods from kubectl dumps instead of a live cluster",
    )
    parser.add_argument(
        "--listen",
        default=None,
        metavar="HOST:PORT",
        help="address to serve on (default 127.0.0.1:8888)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML settings file (keys as in extender/settings.py)",
    )
    parser.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="live mode: kubeconfig (default: in-cluster, else $KUBECONFIG, ~/.kube/config)",
    )
    parser.add_argument("--context", help="live mode: kubeconfig context (default: current)")
    parser.add_argument(
        "--staleness-seconds",
        type=float,
        metavar="SECONDS",
        help="live mode: not ready once a watch has been broken this long (default 60)",
    )
    parser.add_argument("--scheduler-name", help="only check pods of this schedulerName")
    parser.add_argument(
        "--fail-open",
        action="store_true",
        default=None,
        help="when not ready, pass every node instead of answering an error",
    )
    parser.add_argument(
        "--cluster-reserved-ports",
        metavar="SPECS",
        help="ports held by host daemons on every node, e.g. '10250,22'",
    )
    parser.add_argument(
        "--protected-ports",
        metavar="SPECS",
        help="pods holding these ports are never evicted for a port",
    )
    parser.add_argument("--max-body-bytes", type=int, help="largest request body accepted")
    parser.add_argument(
        "--ops-listen",
        metavar="HOST:PORT",
        help="also serve /healthz, /readyz and /metrics (never the verbs) here, for kubelet "
        "probes and Prometheus on the pod IP, e.g. 0.0.0.0:9090",
    )
    _add_setting_flags(parser)
    tls.add_arguments(parser)
    logs.add_arguments(parser)
    parser.set_defaults(run=run)


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for every setting that has none above (`--in-flight-ttl-seconds`...), so every
    YAML key of the settings file can also be given on the command line, as the README says."""
    taken = set(parser._option_string_actions)  # argparse keeps no public list of its flags
    for setting in fields(Settings):
        flag = "--" + setting.name.replace("_", "-")
        if setting.name in LISTEN_FIELDS or flag in taken:
            continue
        default = setting.default if setting.default is not MISSING else None
        help_text = f"setting {setting.name} (default {default!r}; see the README's Settings)"
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            kind = type(default) if isinstance(default, int | float) else str
            parser.add_argument(flag, type=kind, metavar="VALUE", help=help_text)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ExtenderError(f"--listen {text!r}: want HOST:PORT, e.g. 127.0.0.1:8888")
    return host.strip("[]") or "0.0.0.0", int(port)


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        setting.name: getattr(args, setting.name)
        for setting in fields(Settings)
        if setting.name not in LISTEN_FIELDS
    }
    if args.listen:
        overrides["listen_host"], overrides["listen_port"] = parse_listen(args.listen)
    return Settings.from_sources(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    logs.configure_from_args(args)
    settings = settings_from_args(args)
    new_loop = eventloop.loop_factory(settings.event_loop)
    tls_files = tls.files_from_args(args)
    ssl_context = tls.server_context(tls_files) if tls_files is not None else None
    ops_address = parse_listen(args.ops_listen) if args.ops_listen else None
    metrics = new_metrics()
    hint: Path | None = None
    readiness: Readiness
    if not args.snapshot:
        # Imported here so that snapshot mode never loads the `kubernetes` package.
        from extender.server.live import create_live_app  # noqa: PLC0415

        app, readiness, summary = create_live_app(
            settings, kubeconfig=args.kubeconfig, context=args.context, metrics=metrics
        )
    else:
        if args.kubeconfig or args.context:
            raise ExtenderError("--kubeconfig and --context are for live mode: drop --snapshot")
        cluster, summary = load_snapshot_cluster(settings, args.snapshot)
        readiness = AlwaysReady()
        app = create_app(
            cluster, settings, binder=SnapshotBinder(cluster), readiness=readiness, metrics=metrics
        )
        hint = SAMPLE_REQUEST if SAMPLE_REQUEST.exists() else None
    ops_app = create_ops_app(metrics, readiness) if ops_address is not None else None
    ops = (ops_app, *ops_address) if ops_app is not None and ops_address is not None else None
    eventloop.run(
        new_loop, serve_app(app, settings, summary, hint, ssl_context=ssl_context, ops=ops)
    )
    return 0


def load_snapshot_cluster(settings: Settings, paths: list[Path]) -> tuple[Cluster, str]:
    """The cluster of the snapshot files, and a one-line summary for the banner.

    Each object is indexed as it is decoded and then dropped: a 50,000-pod dump decoded whole
    is over a gigabyte of dicts, of which the index keeps only the few fields it needs.
    """
    cluster = Cluster(settings)
    with loading():
        loaded = load_into(paths, cluster.nodes, cluster.pods)
        cluster.settle()
    log.info("%s", loaded.line())
    summary = (
        f"{loaded.nodes} nodes, {loaded.pods} pods "
        f"({len(cluster.pods_by_uid)} with host-level ports) from " + ", ".join(map(str, paths))
    )
    return cluster, summary


async def serve_app(
    app: web.Application,
    settings: Settings,
    summary: str,
    sample_request: Path | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    ops: tuple[web.Application, str, int] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, then shut down cleanly; `ops` is a second (app, host, port)."""
    loop = asyncio.get_running_loop()
    log.info("event loop: %s.%s", type(loop).__module__, type(loop).__qualname__)
    runner = GuardedAppRunner(app, settings)
    await runner.setup()
    site = web.TCPSite(
        runner,
        settings.listen_host,
        settings.listen_port,
        reuse_address=True,
        ssl_context=ssl_context,
    )
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise ExtenderError(
            f"cannot listen on {settings.listen_host}:{settings.listen_port}: {error.strerror}"
        ) from error
    ops_runner = None
    if ops is not None:
        ops_app, ops_host, ops_port = ops
        # The ops port faces the pod network (kubelet probes, Prometheus): the same connection
        # limits as the verbs' listener, or a slowloris client there holds sockets for good.
        ops_runner = GuardedAppRunner(ops_app, settings)
        await ops_runner.setup()
        try:
            await web.TCPSite(ops_runner, ops_host, ops_port, reuse_address=True).start()
        except OSError as error:
            await ops_runner.cleanup()
            await runner.cleanup()
            raise ExtenderError(
                f"cannot listen on {ops_host}:{ops_port} (--ops-listen): {error.strerror}"
            ) from error
    scheme = "https" if ssl_context is not None else "http"
    base = f"{scheme}://{_url_host(settings.listen_host)}:{_bound_port(runner, settings)}"
    print(f"hostport-extender serving {summary} on {base}", flush=True)
    if ops_runner is not None and ops is not None:
        ops_port = _bound_port(ops_runner, settings)
        print(f"health, readiness and metrics on http://{_url_host(ops[1])}:{ops_port}", flush=True)
    if sample_request is not None:
        print(
            "Try a rejection:\n"
            f"  curl -s {base}/filter -H 'Content-Type: application/json' "
            f"-d @{sample_request}",
            flush=True,
        )
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        if ops_runner is not None:
            await ops_runner.cleanup()
        await runner.cleanup()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _bound_port(runner: web.AppRunner, settings: Settings) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return settings.listen_port
