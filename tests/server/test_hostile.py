"""Hostile and broken requests against a real `serve` process: every one gets a 4xx with a
one-line JSON Error, none a 5xx, and none changes what the extender believes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.server.child import FILTER_BODY, Child, served

NODE = "/debug/nodes/ip-10-0-1-13.ec2.internal"
DIGITS = "9" * 4301
SAMPLE_POD = orjson.loads(FILTER_BODY)["Pod"]


def body(value: Any) -> bytes:
    return orjson.dumps(value)


def args(raw_pod: Any, names: Any = ("ip-10-0-1-14.ec2.internal",)) -> bytes:
    return body({"Pod": raw_pod, "NodeNames": names})


HOSTILE: list[tuple[str, str, bytes | None, int]] = [
    ("GET", f"/debug/conflicts?ephemeral-range={DIGITS}-1", None, 400),
    ("GET", f"/debug/conflicts?ephemeral-range=1-{DIGITS}", None, 400),
    ("GET", "/debug/conflicts?ephemeral-range=%C2%B2-5", None, 400),  # superscript two
    ("GET", "/debug/conflicts?ephemeral-range=%00", None, 400),
    ("GET", "/debug/conflicts?ephemeral-range=1-2%0A3-4", None, 400),
    ("GET", "/debug/conflicts?ephemeral-range=0-0", None, 400),
    ("GET", "/debug/conflicts?ephemeral-range=1-2&ephemeral-range=3-4", None, 400),
    ("GET", "/debug/conflicts?verbose=1", None, 400),
    ("GET", f"{NODE}?port={DIGITS}", None, 400),
    ("GET", f"{NODE}?port=%C2%B2", None, 400),
    ("GET", f"{NODE}?port=80-%C2%B3", None, 400),
    ("GET", f"{NODE}?port=80/%FF", None, 400),
    ("GET", f"{NODE}?port=99999999", None, 400),
    ("GET", f"{NODE}?port=80/TCP/UDP", None, 400),
    ("GET", f"{NODE}?port=-", None, 400),
    ("GET", f"{NODE}?port=80&port=81", None, 400),
    ("GET", f"{NODE}?node=x", None, 400),
    ("GET", "/debug/nodes/" + "a" * 300, None, 400),
    ("GET", "/debug/nodes/%00", None, 404),
    ("POST", "/filter", b"", 400),
    ("POST", "/filter", b"[]", 400),
    ("POST", "/filter", b"{", 400),
    ("POST", "/filter", b'{"Pod": "\xff\xfe"}', 400),
    ("POST", "/filter", b"[" * 5000 + b"]" * 5000, 400),
    ("POST", "/filter", b'{"Pod": {}, "NodeNames": [1e999]}', 400),
    ("POST", "/filter", body({"Pod": 1, "NodeNames": []}), 400),
    ("POST", "/filter", body({"Pod": SAMPLE_POD, "NodeNames": "n1"}), 400),
    ("POST", "/filter", body({"Pod": SAMPLE_POD, "NodeNames": [1, 2]}), 400),
    ("POST", "/filter", body({"Pod": SAMPLE_POD, "Nodes": {"items": 5}}), 400),
    ("POST", "/filter", body({"Pod": SAMPLE_POD}), 400),
    ("POST", "/prioritize", b"null", 400),
    ("POST", "/prioritize", body({"Pod": [], "NodeNames": []}), 400),
    ("POST", "/bind", body({}), 400),
    ("POST", "/bind", body({"PodName": 1, "PodNamespace": [], "PodUID": {}, "Node": None}), 400),
    ("POST", "/preempt", body({"Pod": SAMPLE_POD, "NodeNameToMetaVictims": []}), 400),
    ("POST", "/preempt", b"\x00\x01\x02", 400),
    ("GET", "/filter", None, 405),
    ("DELETE", "/bind", None, 405),
    ("POST", "/healthz", b"{}", 405),
    ("GET", "/nope", None, 404),
    ("GET", "/filter/extra/segments", None, 404),
    ("GET", "/" + "x" * 4000, None, 404),
]


def views(child: Child) -> list[bytes]:
    """What the extender believes: the conflicts report and every node's claims."""
    names = [
        "ip-10-0-1-11.ec2.internal",
        "ip-10-0-1-12.ec2.internal",
        "ip-10-0-1-13.ec2.internal",
        "ip-10-0-1-14.ec2.internal",
        "ip-10-0-1-15.ec2.internal",
    ]
    seen = []
    for path in ["/debug/conflicts", *(f"/debug/nodes/{name}" for name in names)]:
        status, _, answer = child.request("GET", path)
        assert status == 200, answer
        seen.append(answer)
    return seen


@pytest.fixture(scope="module")
def child(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Child]:
    """One served sample snapshot for the whole table, as its state must survive all of it."""
    with served(tmp_path_factory.mktemp("hostile")) as running:
        yield running


@pytest.fixture(scope="module")
def before(child: Child) -> list[bytes]:
    return views(child)


@pytest.mark.parametrize("case", HOSTILE, ids=lambda case: f"{case[0]} {case[1][:60]}")
def test_hostile_request_gets_a_one_line_4xx(
    child: Child, before: list[bytes], case: tuple[str, str, bytes | None, int]
) -> None:
    """The answer is the expected 4xx with a one-line JSON Error; the state is unchanged."""
    method, path, data, status = case
    headers = {"Content-Type": "application/json"} if data is not None else {}
    answered, response_headers, answer = child.request(method, path, data, headers)
    assert answered == status, answer
    assert response_headers["Content-Type"].startswith("application/json")
    error = orjson.loads(answer)["Error"]
    assert error
    assert "\n" not in error
    assert len(error) < 400
    assert "Traceback" not in error
    assert views(child) == before


def test_server_still_answers_after_the_table(child: Child, before: list[bytes]) -> None:
    """After every hostile request the extender answers the sample filter as before."""
    assert views(child) == before
    assert child.filter()["NodeNames"] == ["ip-10-0-1-14.ec2.internal"]
