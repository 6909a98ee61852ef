"""The socket table parsers, on lines captured from a real kernel (6.18, x86_64)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extender.agent.procnet import (
    Listener,
    PortRange,
    ProcNetError,
    decode_address,
    parse_inet_table,
    parse_port_range,
    parse_sctp_eps,
    select_listeners,
)

# Captured in a fresh network namespace with 169.254.170.23/32 and fd00:ec2::23/128 on lo.
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 17AAFEA9:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 13040 1 00000000fe6de04c 100 0 0 10 0
   1: 0100007F:280A 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 13049 1 00000000127810ad 100 0 0 10 0
   2: 0100007F:280A 0100007F:D74E 01 00000000:00000000 00:00000000 00000000     0        0 13051 1 0000000072d43823 20 0 0 10 -1
   3: 0100007F:D74E 0100007F:280A 01 00000000:00000000 00:00000000 00000000     0        0 13050 2 000000003ebe4ebc 20 0 0 10 -1
"""  # noqa: E501 (kernel lines are wide)

TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: C20E00FD000000000000000023000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 13045 1 00000000268fbafb 100 0 0 10 0
   1: 00000000000000000000000000000000:238D 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 13047 1 00000000811cca5f 100 0 0 10 0
   2: 00000000000000000000000000000000:238C 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 13046 1 00000000c838553c 100 0 0 10 0
   3: 0000000000000000FFFF00000100007F:0A8F 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 13048 1 000000006cd58fcd 100 0 0 10 0
"""  # noqa: E501

UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 3729: 0100007F:DC35 0100007F:1FBD 01 00000000:00000000 00:00000000 00000000     0        0 13055 2 0000000073a96f75 0
 3740: 0100007F:9C40 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 13056 2 0000000012456961 0
 4633: 00000000:1FBD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 13052 2 00000000a92b6a5f 0
"""  # noqa: E501

UDP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 4634: 00000000000000000000000000000000:1FBE 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 13053 2 000000007bac7e1b 0
12945: C20E00FD000000000000000023000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 13054 2 00000000b5422ae8 0
"""  # noqa: E501

# The kernel here has no SCTP; these lines follow net/sctp/proc.c (sctp_eps_seq_show), the IPv4
# ones as published in insights-core's parser docs, the IPv6 one printed with %pI6.
SCTP_EPS = """\
 ENDPT     SOCK   STY SST HBKT LPORT   UID INODE LADDRS
ffff88017e0a0200 ffff880299f7fa00 2   10  29   11165   200 299689357 10.0.0.102 10.0.0.70
ffff880612e81c00 ffff8803c28a1b00 2   10  30   38412     0 273361203 fd00:0ec2:0000:0000:0000:0000:0000:0023
ffff88061fba9800 ffff88061f8a3180 2   7   31   11167   200 273361145 10.0.0.102
ffff88061fba9900 ffff88061f8a3280 1   10  32   3868      0 37543 0.0.0.0
"""  # noqa: E501


@pytest.mark.parametrize(
    ("hex_text", "expected"),
    [
        ("0100007F", "127.0.0.1"),
        ("17AAFEA9", "169.254.170.23"),
        ("00000000", ""),
        ("00000000000000000000000000000000", ""),
        ("C20E00FD000000000000000023000000", "fd00:ec2::23"),
        ("0000000000000000FFFF00000100007F", "127.0.0.1"),
        ("00000000000000000000000001000000", "::1"),
    ],
)
def test_decode_address(hex_text: str, expected: str) -> None:
    """Hex words are little-endian per 32 bits; wildcards and v4-mapped fold to their short form."""
    assert decode_address(hex_text) == expected


@pytest.mark.parametrize("bad", ["0100007", "zz00007F", "0100007F00"])
def test_decode_address_rejects_garbage(bad: str) -> None:
    """Wrong lengths and non-hex text are errors, not silently wrong addresses."""
    with pytest.raises(ValueError, match="address"):
        decode_address(bad)


@pytest.mark.parametrize(
    ("text", "protocol", "expected"),
    [
        (TCP, "TCP", [("TCP", 80, "169.254.170.23"), ("TCP", 10250, "127.0.0.1")]),
        (
            TCP6,
            "TCP",
            [
                ("TCP", 80, "fd00:ec2::23"),
                ("TCP", 9101, ""),
                ("TCP", 9100, ""),
                ("TCP", 2703, "127.0.0.1"),
            ],
        ),
        (UDP, "UDP", [("UDP", 40000, "127.0.0.1"), ("UDP", 8125, "")]),
        (UDP6, "UDP", [("UDP", 8126, ""), ("UDP", 53, "fd00:ec2::23")]),
    ],
)
def test_parse_inet_table(text: str, protocol: str, expected: list[tuple[str, int, str]]) -> None:
    """Listening TCP and unconnected UDP sockets come out; established and connected ones do not."""
    assert parse_inet_table(text, protocol) == [Listener(*row) for row in expected]


def test_parse_inet_table_names_the_bad_line() -> None:
    """A mangled line is reported with its file, number and text."""
    text = TCP.splitlines()[0] + "\n   0: 0100007F-280A 00000000:0000 0A\n"
    with pytest.raises(ProcNetError, match=r"tcp line 2: endpoint '0100007F-280A'"):
        parse_inet_table(text, "TCP", source="tcp")


def test_parse_inet_table_empty_table() -> None:
    """A table with only its header (no sockets) yields nothing."""
    assert parse_inet_table(UDP.splitlines()[0], "UDP") == []


def test_parse_sctp_eps() -> None:
    """Each address of a listening endpoint is one listener; closed endpoints are skipped."""
    assert parse_sctp_eps(SCTP_EPS) == [
        Listener("SCTP", 11165, "10.0.0.102"),
        Listener("SCTP", 11165, "10.0.0.70"),
        Listener("SCTP", 38412, "fd00:ec2::23"),
        Listener("SCTP", 3868, ""),
    ]


def test_parse_sctp_eps_bad_address() -> None:
    """An address that is not an IP is an error naming the line."""
    with pytest.raises(ProcNetError, match="sctp/eps line 2"):
        parse_sctp_eps(" ENDPT\nffff ffff 2 10 29 80 0 1 not-an-ip\n")


@pytest.mark.parametrize(
    ("range_text", "reserved_text", "expected"),
    [
        ("32768\t60999\n", "", PortRange(32768, 60999)),
        ("1024 65535", "2703,9808-9809\n", PortRange(1024, 65535, frozenset({2703, 9808, 9809}))),
    ],
)
def test_parse_port_range(range_text: str, reserved_text: str, expected: PortRange) -> None:
    """The sysctl files parse into the range and the reserved set."""
    assert parse_port_range(range_text, reserved_text) == expected


@pytest.mark.parametrize(("range_text", "reserved_text"), [("32768", ""), ("1 2", "9808-x")])
def test_parse_port_range_rejects_garbage(range_text: str, reserved_text: str) -> None:
    """Unreadable sysctl text is a clear error."""
    with pytest.raises(ProcNetError):
        parse_port_range(range_text, reserved_text)


def test_select_listeners_drops_ephemeral_udp_only() -> None:
    """UDP in the ephemeral range is noise unless reserved; TCP there is a real listener."""
    listeners = [
        *parse_inet_table(UDP, "UDP"),
        Listener("UDP", 40001, ""),
        Listener("UDP", 8125, ""),
        Listener("TCP", 40000, ""),
    ]
    ephemeral = PortRange(32768, 60999, frozenset({40001}))
    assert select_listeners(listeners, ephemeral) == {
        Listener("UDP", 8125, ""),
        Listener("UDP", 40001, ""),
        Listener("TCP", 40000, ""),
    }
    assert Listener("UDP", 40000, "127.0.0.1") in select_listeners(listeners, None)


@given(st.ip_addresses(), st.integers(min_value=0, max_value=65535))
def test_decode_round_trips_kernel_encoding(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    """Whatever the kernel encodes (little-endian words) decodes to the normalised address."""
    words = [ip.packed[i : i + 4][::-1] for i in range(0, len(ip.packed), 4)]
    hex_text = b"".join(words).hex().upper()
    line = f"   0: {hex_text}:{port:04X} {'0' * len(hex_text)}:0000 07 0 0 0 0"
    (listener,) = parse_inet_table(line, "UDP")
    mapped = getattr(ip, "ipv4_mapped", None)
    if ip.is_unspecified:
        expected = ""
    elif mapped is not None:
        expected = "" if mapped.is_unspecified else str(mapped)
    else:
        expected = ip.compressed
    assert (listener.port, listener.ip) == (port, expected)
