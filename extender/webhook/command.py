"""`hostport-extender webhook`: serve the routing webhook (/mutate) and the preemption guard
(/validate) over HTTPS.

The API server only calls webhooks over HTTPS, so the certificate and key are required; they
come from cert-manager or from `hostport-extender certs`. The webhook reads one object from the
API server, the hostport-aware scheduler's Lease (in-cluster credentials, else a kubeconfig),
and routes pods only while that Lease is fresh.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys

from aiohttp import web

from extender import logs
from extender.core.portspec import parse_port_specs
from extender.core.routing import (
    DEFAULT_BOOTSTRAP_DAEMONSETS,
    DEFAULT_BOOTSTRAP_LABELS,
    DEFAULT_EXCLUDED_NAMESPACES,
    ROUTED_SCHEDULER,
    SELF_LABEL,
    RoutingPolicy,
)
from extender.errors import ExtenderError, PortSpecError
from extender.server import tls
from extender.server.metrics import new_metrics
from extender.webhook.app import create_webhook_app
from extender.webhook.guard import DEFAULT_SCHEDULER_ACCOUNTS, GuardPolicy
from extender.webhook.lease import (
    DEFAULT_LEASE,
    DEFAULT_POLL_SECONDS,
    LeaseRecord,
    LeaseWatch,
    parse_lease_name,
)

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "0.0.0.0:8443"
NO_LEASE = "none"
LEASE_REQUEST_TIMEOUT = 5.0
"""A Lease read that takes longer is a failed read: the webhook must not hang on the API."""
RELOAD_SECONDS = 30.0
"""How often to look for a renewed certificate; kubelet itself takes up to a minute to swap it."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the `webhook` subcommand; `args.run(args)` runs it and returns the exit status."""
    parser = subparsers.add_parser(
        "webhook",
        help="serve the webhook that routes host-port pods to the hostport-aware scheduler",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT to serve on (default {DEFAULT_LISTEN})"
    )
    parser.add_argument(
        "--scheduler-name",
        default=ROUTED_SCHEDULER,
        help=f"schedulerName to set on routed pods (default {ROUTED_SCHEDULER})",
    )
    parser.add_argument(
        "--exclude-namespace",
        action="append",
        metavar="NAMESPACE",
        help="never route pods of this namespace (repeatable; default: "
        + ", ".join(sorted(DEFAULT_EXCLUDED_NAMESPACES))
        + ")",
    )
    parser.add_argument(
        "--self-label",
        default="=".join(SELF_LABEL),
        metavar="KEY=VALUE",
        help="pods with this label are the extender's own and are never routed",
    )
    parser.add_argument(
        "--bootstrap-daemonset",
        action="append",
        metavar="NAME",
        help="never route pods owned by a DaemonSet of this name (repeatable; replaces the "
        "default list: " + ", ".join(sorted(DEFAULT_BOOTSTRAP_DAEMONSETS)) + ")",
    )
    parser.add_argument(
        "--bootstrap-label",
        action="append",
        metavar="KEY=VALUE",
        help="never route pods with this label (repeatable; replaces the default list: "
        + ", ".join(f"{k}={v}" for k, v in sorted(DEFAULT_BOOTSTRAP_LABELS))
        + ")",
    )
    parser.add_argument(
        "--scheduler-lease",
        default="/".join(DEFAULT_LEASE),
        metavar="NAMESPACE/NAME",
        help="the hostport-aware scheduler's leader-election Lease; pods are routed only while "
        "it is fresh (default " + "/".join(DEFAULT_LEASE) + "; `none`: no second scheduler, "
        "never route, serve only the preemption guard)",
    )
    parser.add_argument(
        "--lease-poll-seconds",
        type=float,
        default=DEFAULT_POLL_SECONDS,
        metavar="SECONDS",
        help=f"how often to re-read the Lease (default {DEFAULT_POLL_SECONDS:g})",
    )
    parser.add_argument(
        "--scheduler-service-account",
        action="append",
        metavar="NAMESPACE/NAME",
        help="preemption guard: a second scheduler's ServiceAccount whose pod DELETEs are "
        "checked like system:kube-scheduler's (repeatable; replaces the default "
        + ", ".join("/".join(a) for a in sorted(DEFAULT_SCHEDULER_ACCOUNTS))
        + ")",
    )
    parser.add_argument(
        "--protected-ports",
        default="",
        metavar="SPECS",
        help="preemption guard: pods holding these ports are protected, as if annotated "
        "hostports.dev/protected (annotation syntax, e.g. 80/TCP,443/TCP)",
    )
    parser.add_argument(
        "--materialise-listeners",
        action="store_true",
        help="/materialise declares a new hostNetwork pod's hostports.dev/listen entries as "
        "container ports (only namespaces the webhook configuration selects; default off)",
    )
    parser.add_argument(
        "--kubeconfig",
        help="kubeconfig for reading the Lease (default: in-cluster, else $KUBECONFIG, "
        "~/.kube/config)",
    )
    parser.add_argument("--context", help="kubeconfig context (default: current)")
    tls.add_arguments(parser, required=True)
    logs.add_arguments(parser)
    parser.set_defaults(run=run)


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT; ValueError with the text when it is neither."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--listen {text!r}: want HOST:PORT, e.g. 0.0.0.0:8443 or [::]:8443")
    return host.removeprefix("[").removesuffix("]"), int(port_text)


def parse_label(flag: str, text: str) -> tuple[str, str]:
    """KEY=VALUE; ValueError naming the flag when it is not that."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise ValueError(f"{flag} {text!r}: want KEY=VALUE")
    return key, value


def policy_from_args(args: argparse.Namespace) -> RoutingPolicy:
    """The routing policy the flags describe."""
    excluded = args.exclude_namespace
    daemonsets = args.bootstrap_daemonset
    labels = args.bootstrap_label
    return RoutingPolicy(
        scheduler_name=args.scheduler_name,
        excluded_namespaces=(
            frozenset(excluded) if excluded is not None else DEFAULT_EXCLUDED_NAMESPACES
        ),
        self_label=parse_label("--self-label", args.self_label),
        bootstrap_daemonsets=(
            frozenset(daemonsets) if daemonsets is not None else DEFAULT_BOOTSTRAP_DAEMONSETS
        ),
        bootstrap_labels=(
            frozenset(parse_label("--bootstrap-label", text) for text in labels)
            if labels is not None
            else DEFAULT_BOOTSTRAP_LABELS
        ),
    )


def guard_from_args(args: argparse.Namespace) -> GuardPolicy:
    """The preemption guard's policy the flags describe (PortSpecError for a bad port list)."""
    accounts = args.scheduler_service_account
    parsed = DEFAULT_SCHEDULER_ACCOUNTS
    if accounts is not None:
        pairs = []
        for text in accounts:
            namespace, slash, name = text.partition("/")
            if not slash or not namespace or not name:
                raise ValueError(f"--scheduler-service-account {text!r}: want NAMESPACE/NAME")
            pairs.append((namespace, name))
        parsed = frozenset(pairs)
    try:
        protected = parse_port_specs(args.protected_ports)
    except PortSpecError as error:
        raise ValueError(f"--protected-ports: {error}") from error
    return GuardPolicy(scheduler_accounts=parsed, protected_ports=protected)


def lease_from_args(args: argparse.Namespace) -> LeaseWatch:
    """The Lease watch the flags describe, with an API client (KubeAuthError without config).

    `--scheduler-lease none` (a cluster without a second scheduler, where only the preemption
    guard is used) reads nothing and never routes.
    """
    if not args.lease_poll_seconds > 0:
        raise ValueError(f"--lease-poll-seconds must be above 0, got {args.lease_poll_seconds}")
    if args.scheduler_lease == NO_LEASE:
        lease = LeaseWatch(None, "", NO_LEASE)
        lease.record = LeaseRecord("missing", detail="--scheduler-lease none: routing is off")
        return lease
    namespace, name = parse_lease_name(args.scheduler_lease)
    # Imported here: loading `kubernetes` is for the command that needs it (see agent --once).
    from extender.kube.kubeapi import KubeApi  # noqa: PLC0415
    from extender.kube.kubeauth import load_connection  # noqa: PLC0415

    connection = load_connection(args.kubeconfig, args.context)
    api = KubeApi(connection, request_timeout=LEASE_REQUEST_TIMEOUT, component="webhook")
    return LeaseWatch(api, namespace, name, poll_seconds=args.lease_poll_seconds)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; bad flags or files give one line on stderr and status 2."""
    logs.configure_from_args(args)
    try:
        host, port = parse_listen(args.listen)
        policy = policy_from_args(args)
        guard = guard_from_args(args)
        files = tls.files_from_args(args)
        if files is None:
            raise tls.TLSConfigError("the webhook needs --tls-cert and --tls-key")
        context = tls.server_context(files)
        lease = lease_from_args(args)
    except (ValueError, ExtenderError) as error:
        print(f"hostport-extender webhook: error: {error}", file=sys.stderr)
        return 2
    app = create_webhook_app(
        policy, new_metrics(), lease, guard, materialise_listeners=args.materialise_listeners
    )
    reloader = tls.CertificateReloader(context, files)
    try:
        asyncio.run(_serve(app, host, port, context, reloader))
    except OSError as error:
        print(
            f"hostport-extender webhook: error: cannot listen on {args.listen}: {error}",
            file=sys.stderr,
        )
        return 1
    return 0


async def _serve(
    app: web.Application,
    host: str,
    port: int,
    context: ssl.SSLContext,
    reloader: tls.CertificateReloader,
) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    reload_task = asyncio.create_task(reloader.watch(RELOAD_SECONDS), name="tls-reload")
    try:
        site = web.TCPSite(runner, host, port, ssl_context=context)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        for address in runner.addresses:
            log.info("webhook listening on https://%s:%s/mutate", *_host_port(address))
        await stop.wait()
        log.info("webhook stopping")
    finally:
        reload_task.cancel()
        # wait() does not re-raise the task's cancellation, yet still lets ours through.
        await asyncio.wait([reload_task])
        await runner.cleanup()


def _host_port(address: object) -> tuple[str, int]:
    # IPv4 sockets give (host, port), IPv6 ones (host, port, flowinfo, scope_id).
    assert isinstance(address, tuple)
    host = str(address[0])
    return (f"[{host}]" if ":" in host else host), int(address[1])
