"""The `hostports.dev/observed` text: compact, bounded, and never claiming less than was seen."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from extender.agent.command import encode_observed, listeners_json
from extender.agent.procnet import Listener
from extender.core.portspec import parse_port_specs


def test_exact_text_merges_ranges() -> None:
    """Adjacent ports of one protocol and address become a range; entries sorted by protocol."""
    listeners = [
        Listener("TCP", 80, "169.254.170.23"),
        Listener("UDP", 8125, ""),
        Listener("TCP", 10250, ""),
        Listener("TCP", 10249, ""),
        Listener("TCP", 10248, ""),
        Listener("SCTP", 3868, "fd00:ec2::23"),
    ]
    observed = encode_observed(listeners)
    assert observed.text == "3868/SCTP@fd00:ec2::23,10248-10250/TCP,80/TCP@169.254.170.23,8125/UDP"
    assert observed.coarsened is None


def test_too_long_widens_addresses_first() -> None:
    """Over budget, specific addresses become the wildcard before any extra port is claimed."""
    listeners = [Listener("TCP", port, f"10.0.0.{port % 200 + 1}") for port in range(2000, 2100)]
    observed = encode_observed(listeners, max_bytes=64)
    assert (observed.text, observed.coarsened) == (
        "2000-2099/TCP",
        "addresses widened to all addresses",
    )


def test_still_too_long_bridges_gaps() -> None:
    """When widening is not enough, gaps between ports are claimed, doubling until it fits."""
    listeners = [Listener("UDP", port, "") for port in range(1000, 1100, 3)]
    observed = encode_observed(listeners, max_bytes=40)
    assert observed.text == "1000-1099/UDP"
    assert observed.coarsened == "addresses widened, gaps of up to 2 ports claimed"


def test_empty_set_is_empty_text() -> None:
    """A node with no listeners publishes an empty value (present, meaning: nothing observed)."""
    assert encode_observed([]).text == ""


def test_json_output_shape() -> None:
    """--once -o json: port, protocol, ip, sorted by port."""
    listeners = [Listener("UDP", 8125, ""), Listener("TCP", 80, "169.254.170.23")]
    assert listeners_json(listeners) == (
        b'[{"port":80,"protocol":"TCP","ip":"169.254.170.23"},'
        b'{"port":8125,"protocol":"UDP","ip":""}]'
    )


listener_sets = st.sets(
    st.builds(
        Listener,
        st.sampled_from(["TCP", "UDP", "SCTP"]),
        st.integers(min_value=1, max_value=65535),
        st.sampled_from(["", "10.0.0.1", "169.254.170.23", "fd00:ec2::23"]),
    ),
    max_size=300,
)


@settings(max_examples=60, deadline=None)
@given(listener_sets, st.integers(min_value=20, max_value=4000))
def test_published_text_covers_every_listener(listeners: set[Listener], budget: int) -> None:
    """Whatever the budget, every listener is covered: same protocol, its address or all."""
    observed = encode_observed(listeners, max_bytes=budget)
    specs = parse_port_specs(observed.text)
    for listener in listeners:
        assert any(
            spec.protocol == listener.protocol
            and spec.first <= listener.port <= spec.last
            and spec.ip in ("", listener.ip)
            for spec in specs
        ), listener
    # A tiny budget may not hold even one range per protocol; the text is then at most that.
    longest_minimum = "10000-65535/SCTP,10000-65535/TCP,10000-65535/UDP"
    assert len(observed.text) <= max(budget, len(longest_minimum))
