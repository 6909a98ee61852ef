"""The command line: `hostport-extender SUBCOMMAND ...`; each subcommand lives in its own module.

Placeholder on the agent branch until the lead's cli.py lands on main: on merge keep main's
cli.py and add `agent` to its list of subcommand modules.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from extender import agent

SUBCOMMANDS = (agent,)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the chosen subcommand; returns the exit status."""
    parser = argparse.ArgumentParser(prog="hostport-extender")
    subparsers = parser.add_subparsers(required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    args = parser.parse_args(argv)
    status: int = args.run(args)
    return status
