"""A LIST answer cut into items decodes to exactly what decoding it whole gives, or is not cut."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extender.kube.listpage import cut_list, decode_item
from tests.objects import pod, port

RawDict = dict[str, Any]


def go_list(items: list[RawDict], **metadata: str) -> bytes:
    """A PodList as the API server writes it: envelope keys first, items last, compact."""
    return orjson.dumps(
        {"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": items}
    )


def decoded_in_pieces(data: bytes) -> RawDict | None:
    """What the client builds from a cut page (None: it decodes the page whole instead)."""
    cut = cut_list(data)
    if cut is None:
        return None
    items = [decode_item(raw) for raw in cut.items()]
    if any(item is None for item in items):
        return None
    return {**cut.envelope, "items": items}


def typed_item(raw: RawDict) -> RawDict:
    """A list item as Go writes it: no kind/apiVersion, metadata first."""
    return {key: value for key, value in raw.items() if key not in ("kind", "apiVersion")}


def test_a_page_of_pods_is_cut_into_its_items() -> None:
    pods = [typed_item(pod(f"p{i}", node="n1", ports=[port(80 + i, 80 + i)])) for i in range(5)]
    data = go_list(pods, resourceVersion="42", **{"continue": "eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ"})
    cut = cut_list(data)
    assert cut is not None
    assert len(list(cut.items())) == 5
    assert decoded_in_pieces(data) == orjson.loads(data)


def test_whitespace_around_the_page_and_its_items_is_allowed() -> None:
    """The API server ends each answer with a newline (Go's json.Encoder); JSON allows
    whitespace around the items as well."""
    pods = [typed_item(pod(f"p{i}", node="n1")) for i in range(3)]
    data = go_list(pods, resourceVersion="9")
    spaced = data.replace(b'"items":[', b'"items":[ \n').replace(b"]}", b"\t]}") + b"\n"
    for page in (data + b"\n", b" \r\n" + data, spaced):
        assert decoded_in_pieces(page) == orjson.loads(data)


def test_items_that_carry_kind_and_api_version_are_cut_too() -> None:
    """tests/fakeapi.py (and a server that fills TypeMeta in) open each item with kind."""
    data = go_list([pod("a"), pod("b"), pod("c")], resourceVersion="7")
    assert decoded_in_pieces(data) == orjson.loads(data)


@pytest.mark.parametrize(
    "data",
    [
        go_list([], resourceVersion="1"),
        orjson.dumps({"kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": []}),
        b'{"kind":"PodList","metadata":{"resourceVersion":"1"},"items":[ ]}',
    ],
)
def test_an_empty_page_has_no_items(data: bytes) -> None:
    cut = cut_list(data)
    assert cut is not None
    assert list(cut.items()) == []
    assert cut.envelope["metadata"] == {"resourceVersion": "1"}


def test_a_nested_items_key_or_items_not_last_is_not_cut() -> None:
    """Only the list's own `items` may be cut; a pod's projected volume has `items` too."""
    volume = {"name": "v", "configMap": {"name": "c", "items": [{"key": "k", "path": "p"}]}}
    raw = typed_item(pod("a"))
    raw["spec"]["volumes"] = [volume]
    items_first = orjson.dumps({"items": [raw], "kind": "PodList", "metadata": {}})
    assert decoded_in_pieces(items_first) is None
    not_last = orjson.dumps({"kind": "PodList", "items": [raw], "metadata": {"x": "y"}})
    assert decoded_in_pieces(not_last) is None


def test_a_split_that_falls_inside_an_item_is_refused() -> None:
    """An item holding the separator pattern itself (objects opening with metadata in a list)."""
    raw = typed_item(pod("a"))
    raw["spec"]["extra"] = [{"metadata": {"name": "x"}}, {"metadata": {"name": "y"}}]
    data = go_list([raw, typed_item(pod("b"))], resourceVersion="3")
    assert decoded_in_pieces(data) is None  # so the client decodes the page whole


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["metadata", "items", "kind", "a", "},{"]), children)
    ),
    max_leaves=12,
)
tricky_text = st.sampled_from(
    ['},{"metadata":{', '"items":[', "]}", '\\",', "}", "{", '"', "\\"]
) | st.text(max_size=10)


@given(
    bodies=st.lists(
        st.dictionaries(st.sampled_from(["spec", "status", "x"]), json_values, max_size=3),
        max_size=6,
    ),
    names=st.lists(tricky_text, min_size=6, max_size=6),
    envelope_first=st.booleans(),
)
def test_whatever_the_items_hold_a_cut_page_decodes_as_the_whole(
    bodies: list[RawDict], names: list[str], envelope_first: bool
) -> None:
    items = [{"metadata": {"name": names[i]}, **body} for i, body in enumerate(bodies)]
    if envelope_first:
        data = go_list(items, resourceVersion=names[0])
    else:
        data = orjson.dumps({"items": items, "metadata": {"resourceVersion": "1"}})
    pieces = decoded_in_pieces(data)
    assert pieces is None or pieces == orjson.loads(data)
    if envelope_first and all("metadata" not in str(body) for body in bodies):
        assert pieces is not None  # the common shape is cut, not merely refused
