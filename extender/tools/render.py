"""Output for people and for machines: aligned tables (coloured on a terminal), JSON, YAML.

The JSON and YAML forms are the reports' `as_json()` dicts unchanged, so they are the same
documents the extender serves under `/debug`; the README lists their keys.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import yaml

from extender.tools.audit import AuditReport
from extender.tools.check import PLACEMENT_NOTE, CheckReport
from extender.tools.who import WhoReport

FORMATS = ("table", "json", "yaml")
Painter = Callable[[str], str]
NODE_ROWS = 20
"""Per status, how many nodes `check`'s table lists before it summarises the rest."""
NAMES_SHOWN = 5


class Style:
    """ANSI colour when enabled (a terminal, NO_COLOR unset), plain text otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def _paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled and text else text

    def bold(self, text: str) -> str:
        return self._paint(text, "1")

    def red(self, text: str) -> str:
        return self._paint(text, "31")

    def green(self, text: str) -> str:
        return self._paint(text, "32")

    def yellow(self, text: str) -> str:
        return self._paint(text, "33")


def document(data: dict[str, Any], fmt: str) -> str:
    """`data` as JSON (indented) or YAML (keys in schema order)."""
    if fmt == "json":
        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    style: Style,
    paint: Sequence[Painter | None] = (),
    indent: str = "",
) -> str:
    """Columns padded to their widest cell (the last column is not padded); `paint[i]` is an
    optional Style method applied to column i after padding, so colour never breaks alignment."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    last = len(headers) - 1
    header = [
        style.bold(_pad(h, w, i == last))
        for i, (h, w) in enumerate(zip(headers, widths, strict=True))
    ]
    lines = [_line(header, indent)]
    for row in rows:
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
            padded = _pad(cell, width, i == last)
            painter = paint[i] if i < len(paint) else None
            cells.append(painter(padded) if painter is not None else padded)
        lines.append(_line(cells, indent))
    return "\n".join(lines) + "\n"


def _pad(cell: str, width: int, last: bool) -> str:
    return cell if last else f"{cell:<{width}}"


def _line(cells: Sequence[str], indent: str) -> str:
    return (indent + "  ".join(cells)).rstrip()


def who_table(report: WhoReport, style: Style) -> str:
    where = report.node if report.query is None else f"{report.node}, port {report.query}"
    if not report.claims:
        return f"{where}: no claims\n"
    rows = [(view.spec, view.address_text, view.kind_text, view.holder) for view in report.claims]
    count = len(report.claims)
    heading = style.bold(f"{where}: {count} claim{'s' if count != 1 else ''}")
    return heading + "\n" + table(("PORT", "ADDRESS", "KIND", "HOLDER"), rows, style)


def audit_table(report: AuditReport, style: Style) -> str:
    conflicts, risks = len(report.conflicts), len(report.risks)
    lines = [
        f"{report.nodes} nodes, "
        + (style.red(_plural(conflicts, "conflict")) if conflicts else style.green("no conflicts"))
        + ", "
        + (style.yellow(_plural(risks, "risk")) if risks else "no risks")
        + f" (ephemeral range {report.ephemeral_range[0]}-{report.ephemeral_range[1]})"
        + (f", {_plural(len(report.protected), 'protected holder')}" if report.protected else "")
        + (
            ", "
            + style.yellow(f"{len(report.unrouted)} placed without the hostport-aware scheduler")
            if report.unrouted
            else ""
        )
        + "\n"
    ]
    if report.conflicts:
        rows = [
            (
                c.node,
                c.spec,
                c.address or "*",
                c.claims[0].holder,
                c.claims[1].holder,
            )
            for c in report.conflicts
        ]
        headers = ("NODE", "PORT", "ADDRESS", "HELD BY", "COLLIDES WITH")
        lines.append("\n" + style.bold("CONFLICTS") + "\n" + table(headers, rows, style))
    if report.risks:
        risk_rows = [
            (r.node, r.risk, r.claim.spec, r.claim.address_text, r.claim.holder, r.detail)
            for r in report.risks
        ]
        risk_headers = ("NODE", "RISK", "PORT", "ADDRESS", "HOLDER", "WHY")
        paint = (None, style.yellow)
        lines.append(
            "\n" + style.bold("RISKS") + "\n" + table(risk_headers, risk_rows, style, paint)
        )
    if report.protected:
        holder_rows = [(h.node, h.pod, h.ports or "-", h.why) for h in report.protected]
        holder_headers = ("NODE", "POD", "HOLDS", "PROTECTED BY")
        lines.append(
            "\n"
            + style.bold("PROTECTED HOLDERS")
            + " (a scheduler may not delete them)\n"
            + table(holder_headers, holder_rows, style)
        )
    if report.unrouted:
        unrouted_rows = [(u.node, u.pod, u.ports or "-", u.created, u.why) for u in report.unrouted]
        unrouted_headers = ("NODE", "POD", "HOLDS", "CREATED", "WHY")
        lines.append(
            "\n"
            + style.bold("PLACED BY THE DEFAULT SCHEDULER")
            + " (the webhook would route them now)\n"
            + table(unrouted_headers, unrouted_rows, style)
        )
    return "".join(lines)


def check_table(report: CheckReport, style: Style) -> str:
    parts: list[str] = []
    for check in report.workloads:
        workload = check.workload
        verdict = style.green(check.summary) if check.fits else style.red(check.summary)
        lines = [
            style.bold(f"{workload.key}") + f" ({workload.source})",
            f"  host ports: {check.host_ports or 'none'}",
            f"  {verdict}",
        ]
        listen = check.listen
        if listen.added:
            declared = ", ".join(f"{p.spec} ({p.name})" for p in listen.added)
            lines.append(f"  with listen materialisation, declares: {declared}")
        lines.extend(f"  listen materialisation: {n}" for n in (listen.error, *listen.notes) if n)
        if check.replacing:
            shown = ", ".join(check.replacing[:NAMES_SHOWN])
            more = len(check.replacing) - NAMES_SHOWN
            tail = f" and {more:,} more" if more > 0 else ""
            lines.append(f"  replacing its existing pods: {shown}{tail}")
        rows: list[tuple[str, str, str]] = []
        for blocked in check.blocked[:NODE_ROWS]:
            for index, reason in enumerate(blocked.reasons):
                rows.append(
                    (blocked.node if index == 0 else "", "blocked" if index == 0 else "", reason)
                )
        rows.extend(_more(len(check.blocked), "blocked"))
        rows.extend((node, "free", "") for node in check.free[:NODE_ROWS])
        rows.extend(_more(len(check.free), "free"))
        if len(check.untargeted) <= NODE_ROWS:
            rows.extend((u.node, "not targeted", u.reason) for u in check.untargeted)
        else:
            by_reason = Counter(u.reason for u in check.untargeted)
            rows.extend(
                (f"({_plural(count, 'node')})", "not targeted", reason)
                for reason, count in sorted(by_reason.items())
            )
        text = "\n".join(lines) + "\n"
        if check.host_ports and rows:
            text += table(("NODE", "PORT CHECK", "WHY"), rows, style, (None, _status(style)), "  ")
        parts.append(text)
    if report.skipped:
        parts.append(f"skipped (no pods): {', '.join(report.skipped)}\n")
    if not report.workloads:
        parts.append("no workloads found\n")
    parts.append(f"approximate: {PLACEMENT_NOTE}\n")
    return "\n".join(parts)


def _more(count: int, status: str) -> list[tuple[str, str, str]]:
    """The line standing for rows left out of a long table (JSON output lists them all)."""
    if count <= NODE_ROWS:
        return []
    return [(f"({count - NODE_ROWS:,} more)", status, "see -o json for every node")]


def _status(style: Style) -> Painter:
    def paint(text: str) -> str:
        word = text.strip()
        if word == "blocked":
            return style.red(text)
        return style.green(text) if word == "free" else text

    return paint


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"
