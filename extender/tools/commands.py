"""`hostport-extender audit | check | who`: the operator's toolbox on the command line.

Exit codes: 0 when all is well, 1 when `audit` finds conflicts or `check` finds a workload that
would not fit, 2 for errors (printed as one line by `extender.cli`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from extender.errors import ExtenderError
from extender.heap import collector_paused
from extender.tools.audit import DEFAULT_EPHEMERAL_RANGE, audit, parse_ephemeral_range
from extender.tools.check import check_manifests
from extender.tools.manifests import read_manifests
from extender.tools.placement import node_facts
from extender.tools.render import (
    FORMATS,
    Style,
    audit_table,
    check_table,
    document,
    who_table,
)
from extender.tools.source import add_source_options, load
from extender.tools.who import parse_port_query, who


def add_parser(subparsers: Any) -> None:
    audit_parser: argparse.ArgumentParser = subparsers.add_parser(
        "audit",
        help="list the host-port conflicts and risks in a cluster",
        description="Every pair of claims that collide on a node, and risky listeners. "
        "Exit code 0 when there is no conflict, 1 when there is one.",
    )
    audit_parser.add_argument(
        "--ephemeral-range",
        default=f"{DEFAULT_EPHEMERAL_RANGE[0]}-{DEFAULT_EPHEMERAL_RANGE[1]}",
        metavar="FIRST-LAST",
        help="the nodes' net.ipv4.ip_local_port_range (default %(default)s)",
    )
    _common(audit_parser)
    audit_parser.set_defaults(run=run_audit)

    check_parser: argparse.ArgumentParser = subparsers.add_parser(
        "check",
        help="preflight: which nodes a workload's host ports would keep it off",
        description="For each Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or "
        "CronJob in the manifests: the nodes it could not run on because of host ports, and why. "
        "Exit code 0 when everything fits, 1 when something does not.",
    )
    check_parser.add_argument(
        "-f",
        "--filename",
        action="extend",
        nargs="+",
        required=True,
        metavar="MANIFEST",
        help="YAML or JSON manifests, multi-document allowed; - reads stdin",
    )
    check_parser.add_argument(
        "-n",
        "--namespace",
        default="default",
        help="namespace of objects that name none (default %(default)s)",
    )
    _common(check_parser)
    check_parser.set_defaults(run=run_check)

    who_parser: argparse.ArgumentParser = subparsers.add_parser(
        "who",
        help="show who holds the host ports of a node",
        description="Every claim on NODE (or on PORT of it): holder, kind, address, protocol.",
    )
    who_parser.add_argument("node", metavar="NODE")
    who_parser.add_argument(
        "port", nargs="?", metavar="PORT[/PROTO]", help="e.g. 80, 8125/UDP, 30000-30100"
    )
    _common(who_parser)
    who_parser.set_defaults(run=run_who)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", choices=FORMATS, default="table", help="output format (default table)"
    )
    add_source_options(parser)


def style_for(stream: TextIO) -> Style:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return Style(stream.isatty() and not os.environ.get("NO_COLOR"))


Run = Callable[[argparse.Namespace], int]


@contextlib.contextmanager
def _without_gc() -> Iterator[None]:
    """Pause the cyclic GC for the whole command.

    Loading allocates millions of objects that all stay alive until exit; the GC's passes over
    them find nothing and nearly double the run (`audit` of 5,000 nodes x 30 pods from
    bench/tools_scale.py: 4.3 s -> 2.5 s). A command is one-shot, so nothing is lost; the GC is
    back on afterwards for whoever called it in-process (tests).
    """
    with collector_paused():
        yield


def _one_shot(run: Run) -> Run:
    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        with _without_gc():
            return run(args)

    return wrapper


@_one_shot
def run_audit(args: argparse.Namespace) -> int:
    ephemeral = parse_ephemeral_range(args.ephemeral_range)
    loaded = load(args)
    report = audit(loaded.cluster, ephemeral, loaded.finished, loaded.raw_pods)
    _emit(report.as_json(), args.output, lambda style: audit_table(report, style))
    return 0 if report.clean else 1


@_one_shot
def run_check(args: argparse.Namespace) -> int:
    manifests = read_manifests(args.filename, sys.stdin.buffer, args.namespace)
    loaded = load(args)
    nodes = [node_facts(raw) for raw in loaded.raw_nodes]
    if not nodes:
        raise ExtenderError("no Node objects to check against: dump `kubectl get nodes,pods -A`")
    report = check_manifests(loaded.cluster, nodes, loaded.raw_pods, manifests)
    _emit(report.as_json(), args.output, lambda style: check_table(report, style))
    return 0 if report.fits else 1


@_one_shot
def run_who(args: argparse.Namespace) -> int:
    query = parse_port_query(args.port) if args.port else None
    loaded = load(args)
    report = who(loaded.cluster, args.node, query)
    _emit(report.as_json(), args.output, lambda style: who_table(report, style))
    return 0


def _emit(data: dict[str, Any], fmt: str, as_table: Callable[[Style], str]) -> None:
    out = sys.stdout
    out.write(as_table(style_for(out)) if fmt == "table" else document(data, fmt))
    out.flush()
