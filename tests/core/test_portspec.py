"""The annotation syntax `PORT[-END][/PROTO][@IP]` and address normalisation."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extender.core.portspec import (
    WILDCARD,
    PortSpec,
    format_port_specs,
    merge_port_specs,
    normalize_ip,
    parse_port_spec,
    parse_port_specs,
    parse_port_specs_lenient,
)
from extender.errors import PortSpecError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80", PortSpec("TCP", 80, 80, WILDCARD)),
        (" 80/tcp ", PortSpec("TCP", 80, 80, WILDCARD)),
        ("8125/UDP", PortSpec("UDP", 8125, 8125, WILDCARD)),
        ("9/sctp", PortSpec("SCTP", 9, 9, WILDCARD)),
        ("30000-30100", PortSpec("TCP", 30000, 30100, WILDCARD)),
        ("80/TCP@169.254.170.23", PortSpec("TCP", 80, 80, "169.254.170.23")),
        ("80/TCP@fd00:ec2::23", PortSpec("TCP", 80, 80, "fd00:ec2::23")),
        ("80@[fd00:ec2:0::23]", PortSpec("TCP", 80, 80, "fd00:ec2::23")),
        ("80@0.0.0.0", PortSpec("TCP", 80, 80, WILDCARD)),
        ("80@::", PortSpec("TCP", 80, 80, WILDCARD)),
        ("53/udp@::ffff:10.0.0.1", PortSpec("UDP", 53, 53, "10.0.0.1")),
        ("65535", PortSpec("TCP", 65535, 65535, WILDCARD)),
    ],
)
def test_parse_valid_entries(text: str, expected: PortSpec) -> None:
    """Every documented form parses; protocol case and IP spelling are normalised."""
    assert parse_port_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0", "outside 1-65535"),
        ("65536", "outside 1-65535"),
        ("http", "not a port number"),
        ("80/tcpx", "unknown protocol"),
        ("80/", "'/' must be followed"),
        ("100-90", "below its start"),
        ("80@", "must be followed by an IP"),
        ("80@not-an-ip", "does not appear to be an IPv4 or IPv6 address"),
        ("-5", "not a port number"),
    ],
)
def test_parse_rejects_bad_entries_quoting_them(text: str, fragment: str) -> None:
    """A bad entry raises PortSpecError whose message quotes the entry and says what is wrong."""
    with pytest.raises(PortSpecError) as caught:
        parse_port_spec(text)
    assert repr(text.strip()) in str(caught.value) or text.strip() == ""
    assert fragment in str(caught.value)


def test_list_parsing_strict_and_lenient() -> None:
    """Strict parsing stops at the first bad entry; lenient keeps the good ones and reports."""
    text = "80/TCP@169.254.170.23, 8125/UDP, bogus, 30000-30100"
    with pytest.raises(PortSpecError, match="'bogus'"):
        parse_port_specs(text)
    specs, problems = parse_port_specs_lenient(text)
    assert [str(s) for s in specs] == ["80/TCP@169.254.170.23", "8125/UDP", "30000-30100/TCP"]
    assert len(problems) == 1
    assert "'bogus'" in problems[0]


def test_empty_entries_are_ignored() -> None:
    """Trailing commas and blank entries are tolerated."""
    assert parse_port_specs(" 80, ,443,") == (
        PortSpec("TCP", 80, 80),
        PortSpec("TCP", 443, 443),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", WILDCARD),
        ("0.0.0.0", WILDCARD),
        ("::", WILDCARD),
        ("0:0::0", WILDCARD),
        ("10.0.0.1", "10.0.0.1"),
        ("FD00:EC2:0:0::23", "fd00:ec2::23"),
        ("::ffff:169.254.170.23", "169.254.170.23"),
    ],
)
def test_normalize_ip(text: str, expected: str) -> None:
    """Equal addresses normalise to equal text; every unspecified address is the wildcard."""
    assert normalize_ip(text) == expected


def test_merge_joins_overlapping_and_adjacent_ranges_per_protocol_and_ip() -> None:
    """Ranges merge only within the same protocol and address."""
    specs = parse_port_specs("80,81,82-90,95/TCP,80/UDP,80@10.0.0.1,85-100")
    assert format_port_specs(specs) == "80-100/TCP,80/TCP@10.0.0.1,80/UDP"


spec_strategy = st.builds(
    lambda proto, first, span, ip: PortSpec(proto, first, min(65535, first + span), ip),
    st.sampled_from(["TCP", "UDP", "SCTP"]),
    st.integers(1, 65535),
    st.integers(0, 50),
    st.sampled_from([WILDCARD, "10.0.0.1", "fd00:ec2::23"]),
)


@given(st.lists(spec_strategy, max_size=30))
def test_format_then_parse_covers_exactly_the_same_ports(specs: list[PortSpec]) -> None:
    """Formatting loses nothing: the parsed text covers the same (protocol, ip, port) set."""

    def covered(items: tuple[PortSpec, ...] | list[PortSpec]) -> set[tuple[str, str, int]]:
        return {(s.protocol, s.ip, p) for s in items for p in range(s.first, s.last + 1)}

    text = format_port_specs(specs)
    assert covered(parse_port_specs(text)) == covered(specs)
    assert merge_port_specs(parse_port_specs(text)) == parse_port_specs(text)


@given(st.text(max_size=60))
def test_any_text_parses_or_raises_port_spec_error(text: str) -> None:
    """No input makes the parser fail any other way; lenient parsing never raises."""
    with contextlib.suppress(PortSpecError):
        parse_port_specs(text)
    specs, _problems = parse_port_specs_lenient(text)
    assert all(1 <= s.first <= s.last <= 65535 for s in specs)
