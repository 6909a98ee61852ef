"""`kubectl hostports audit | check | who`: the toolbox as a kubectl plugin, with its completion.

kubectl runs `kubectl-hostports` (found on PATH) with everything after `hostports`, and passes
its exit code through; flags must follow the plugin's name (kubectl refuses them before it). The
plugin follows kubectl's conventions where they differ from `hostport-extender`'s:

- `--kubeconfig`, `--context` and `KUBECONFIG` select the cluster, as for `serve`;
- `-n/--namespace` of `check` defaults to the current context's namespace (as `kubectl apply -f`
  does), then `default`; `audit` and `who` are cluster-wide and accept and ignore it, as
  `kubectl get nodes -n x` does;
- errors are one line, `error: ...`, exit code 2 (1 keeps meaning "found a conflict", like
  `kubectl diff`'s 1 for "found differences").

Shell completion: kubectl runs `kubectl_complete-hostports ARGS... WORD` for
`kubectl hostports ARGS... WORD<TAB>` and expects Cobra's `__complete` answer: one candidate a
line (TAB, then a description), then `:DIRECTIVE`.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from extender.errors import ExtenderError
from extender.tools import commands

PROG = "kubectl hostports"

NAMESPACE_FLAGS = ("-n", "--namespace")


def build_parser() -> argparse.ArgumentParser:
    """The toolbox's parser, renamed for kubectl and with kubectl's `-n` on every command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Host-port conflicts, preflight checks and port holders, from the cluster "
        "kubectl points at. Exit code 0 when all is well, 1 when audit finds a conflict or check "
        "a workload that does not fit, 2 on errors.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(subparsers)
    choices: dict[str, argparse.ArgumentParser] = subparsers.choices
    # None means "not given": run() fills in the context's namespace.
    choices["check"].set_defaults(namespace=None)
    for name in ("audit", "who"):
        choices[name].add_argument(
            *NAMESPACE_FLAGS,
            metavar="NAMESPACE",
            help="ignored: this command is cluster-wide (as `kubectl get nodes -n x`)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The `kubectl-hostports` executable."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check" and args.namespace is None:
            args.namespace = default_namespace(args)
        code: int = args.run(args)
    except ExtenderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


def default_namespace(args: argparse.Namespace) -> str:
    """The current (or `--context`) context's namespace in live mode, else `default`."""
    if args.snapshot:
        return "default"
    # Imported here, as in tools.source: the official client is slow to import.
    from extender.kube.kubeauth import context_namespace  # noqa: PLC0415

    return context_namespace(args.kubeconfig, args.context) or "default"


# Cobra's ShellCompDirective values (what the shell does besides offering the candidates).
DEFAULT = 0
"""Candidates, and file names too."""
NO_FILES = 4
"""Only the candidates."""


def complete(words: Sequence[str]) -> tuple[list[str], int]:
    """Candidates ("value" or "value<TAB>description") for the last of `words`, and a directive."""
    parser = build_parser()
    subparsers: dict[str, argparse.ArgumentParser] = _subparsers(parser)
    *before, word = words or [""]
    if not before:
        helps = _subcommand_help(parser)
        return [f"{name}\t{helps[name]}" for name in subparsers if name.startswith(word)], NO_FILES
    command = subparsers.get(before[0])
    if command is None:
        return [], NO_FILES
    options = {flag: action for action in command._actions for flag in action.option_strings}
    previous = options.get(before[-1]) if len(before) > 1 else None
    if previous is not None and previous.nargs != 0:
        return _values(previous, before, word)
    if word.startswith("-"):
        flags = [
            f"{flag}\t{action.help or ''}".rstrip("\t")
            for flag, action in options.items()
            if flag.startswith("--") and flag.startswith(word)
        ]
        return flags, NO_FILES
    positionals, taking = _scan(before[1:], options)
    if taking is not None:
        # `--snapshot a b <TAB>` and `-f a <TAB>`: argparse takes more values for the list.
        return _values(taking, before, word)
    if before[0] == "who" and not positionals:
        return [n for n in _node_names(before[1:]) if n.startswith(word)], NO_FILES
    return [], NO_FILES


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            choices: dict[str, argparse.ArgumentParser] = action.choices
            return choices
    raise AssertionError("the plugin parser has subcommands")


def _subcommand_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {choice.dest: choice.help or "" for choice in action._choices_actions}
    return {}


def _values(action: argparse.Action, before: Sequence[str], word: str) -> tuple[list[str], int]:
    """Candidates for the value of the option that `before` ends with."""
    if action.choices is not None:
        return [str(c) for c in action.choices if str(c).startswith(word)], NO_FILES
    if action.dest == "context":
        contexts = _kubectl(["config", "get-contexts", "-o", "name"])
        return [c for c in contexts if c.startswith(word)], NO_FILES
    if action.dest in {"snapshot", "filename", "kubeconfig", "config"}:
        return [], DEFAULT
    return [], NO_FILES


def _scan(
    words: Sequence[str], options: dict[str, argparse.Action]
) -> tuple[list[str], argparse.Action | None]:
    """The positional arguments among `words`, and the option taking a list (nargs + or *, given
    as `--opt v1 v2`) whose values `words` end in, if any. As argparse reads them, a word after
    such a list is one more value: `who --snapshot FILE NODE` needs `--snapshot=FILE`."""
    found: list[str] = []
    taking: argparse.Action | None = None
    skip = False
    for word in words:
        if word.startswith("-"):
            action = options.get(word.split("=", 1)[0])
            taking, skip = None, False
            if action is not None and action.nargs != 0 and "=" not in word:
                if action.nargs in ("+", "*"):
                    taking = action
                else:
                    skip = True
        elif skip:
            skip = False
        elif taking is None:
            found.append(word)
    return found, taking


def _option_value(words: Sequence[str], *flags: str) -> list[str]:
    """Values given to any of `flags` (both `--flag value` and `--flag=value`)."""
    values: list[str] = []
    iterator: Iterator[str] = iter(words)
    for word in iterator:
        name, equals, value = word.partition("=")
        if name in flags:
            values.append(value if equals else next(iterator, ""))
    return values


def _node_names(words: Sequence[str]) -> list[str]:
    """Node names for `who NODE`: from the `--snapshot` files given, else from the cluster."""
    snapshots = _snapshot_files(words)
    if snapshots:
        from extender.kube.snapshot import load_objects  # noqa: PLC0415 (only when completing)

        try:
            objects = load_objects([Path(p) for p in snapshots])
        except ExtenderError:
            return []
        return sorted(str(n.get("metadata", {}).get("name", "")) for n in objects.nodes)
    kubeconfig = next(reversed(_option_value(words, "--kubeconfig")), None)
    context = next(reversed(_option_value(words, "--context")), None)
    try:
        return asyncio.run(asyncio.wait_for(_live_node_names(kubeconfig, context), 5))
    except Exception:  # a completion prints candidates or nothing, never an error
        return []


async def _live_node_names(kubeconfig: str | None, context: str | None) -> list[str]:
    """Node names listed from the cluster, with the same credentials the commands use."""
    # Imported here, as in tools.source: only a completion of NODE needs the client.
    from extender.kube.kubeapi import KubeApi  # noqa: PLC0415
    from extender.kube.kubeauth import load_connection  # noqa: PLC0415

    async with KubeApi(load_connection(kubeconfig, context), component="kubectl-hostports") as api:
        items, _version = await api.list_all("/api/v1/nodes")
    return sorted(str(item.get("metadata", {}).get("name", "")) for item in items)


def _snapshot_files(words: Sequence[str]) -> list[str]:
    """The files after `--snapshot` (it takes several, up to the next option)."""
    files: list[str] = []
    taking = False
    for word in words:
        if word.startswith("-"):
            taking = word == "--snapshot"
            if word.startswith("--snapshot="):
                files.append(word.partition("=")[2])
        elif taking:
            files.append(word)
    return files


def _kubectl(argv: list[str]) -> list[str]:
    """Words of a quick kubectl query (kubectl is there: it runs us); nothing on failure."""
    try:
        result = subprocess.run(
            ["kubectl", *argv], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return result.stdout.split() if result.returncode == 0 else []


def complete_main(argv: Sequence[str] | None = None) -> int:
    """The `kubectl_complete-hostports` executable kubectl calls to complete `kubectl hostports`."""
    words = list(sys.argv[1:] if argv is None else argv)
    candidates, directive = complete(words)
    out = sys.stdout
    for candidate in candidates:
        out.write(candidate + "\n")
    out.write(f":{directive}\n")
    out.flush()
    return 0
