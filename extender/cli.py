"""The command line: `hostport-extender COMMAND ...`. Each command lives in its own module,
which provides `add_parser(subparsers)`; the parser's `run` default is called with the args."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from extender import __version__
from extender.agent import command as agent
from extender.errors import ExtenderError
from extender.server import serve
from extender.tools import commands as tools
from extender.webhook import certs_command as certs_cli
from extender.webhook import command as webhook_cli

COMMANDS: tuple[ModuleType, ...] = (serve, webhook_cli, certs_cli, agent, tools)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hostport-extender",
        description="A kube-scheduler extender that keeps pods off nodes where host ports collide.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; errors are one line on stderr and a non-zero exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ExtenderError as error:
        print(f"hostport-extender: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
