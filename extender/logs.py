"""Process logging: `--log-format json|text` and `--log-level`.

JSON is one object per line, so log shippers need no multi-line rules; a traceback goes into the
`exc` field of that one line. Fields passed with `extra=` (pod, node, uid, ...) become keys of
the object. Logging is configured once, at the command line's entry, on the root logger.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from typing import Any, TextIO

import orjson

FORMATS = ("json", "text")
LEVELS = ("debug", "info", "warning", "error")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JSONFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, the `extra` fields, exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(log_format: str, level: str, stream: TextIO | None = None) -> None:
    """Replace the root logger's handlers with one writing `log_format` at `level`."""
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(FORMATS)}")
    if level.lower() not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log would add a line per scheduler call; our metrics cover that.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--log-format` and `--log-level` to a subcommand's parser."""
    parser.add_argument("--log-format", choices=FORMATS, default="text", help="default: text")
    parser.add_argument(
        "--log-level", type=str.lower, choices=LEVELS, default="info", help="default: info"
    )


def configure_from_args(args: argparse.Namespace, stream: TextIO | None = None) -> None:
    """`configure` with the values of the flags `add_arguments` added."""
    configure(args.log_format, args.log_level, stream)
