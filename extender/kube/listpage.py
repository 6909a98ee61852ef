"""Cut a LIST answer into its items' bytes, so a page can be decoded an item at a time.

Pure. A page of 500 pods is ~2 MB of JSON; one `orjson.loads` of it holds the event loop for
10-25 ms, and a relist is 60 such pages for 30,000 pods. Decoded an item at a time, the informer
can let requests run between items. Nothing here guesses: the cut is checked, and any answer it
cannot prove it cut exactly comes back as None, to be decoded whole as before.

Why the cut is exact when it is accepted: the API server (Go's encoding/json) writes a list as
`{"kind":..,"apiVersion":..,"metadata":{..flat strings..},"items":[ITEM,ITEM,...]}`, every
item opening with the same keys (`{"metadata":{` for a typed list). The first `"items":[` is
the list's own key if the bytes before it, closed with `}`, decode to an object (a nested one
would leave a brace open). The items are split where `},` is followed by that opening; a quote
inside a string is always escaped, so the split can only fall between JSON values, and if it
fell inside an item, the piece before would leave that item's brace open and fail to decode on
its own. So if every piece decodes to an object, the pieces are exactly the items.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

RawObject = dict[str, Any]

_ITEMS = b'"items":['
_METADATA = b'"metadata":{'
_LONGEST_OPENING = 256
"""An item's keys before `"metadata":{` (kind, apiVersion) are short; beyond this, not a list
item as the API server writes one."""
_WHITESPACE = b" \t\n\r"
"""JSON's whitespace, which may surround the items."""


class ListPage:
    """A LIST answer cut into its envelope and, as they are asked for, its items' raw bytes.

    The items are found one at a time (`items`): cutting a 2 MB page of 500 pods up front (one
    copy of the body, a split, then each piece copied again with its opening put back) took 3-4
    ms of CPU in one go during a relist, every page, before the first item could yield to a
    request. Found lazily, each item costs one search from the last and one copy of itself.
    """

    __slots__ = ("_data", "_end", "_opening", "_start", "envelope")

    def __init__(self, envelope: RawObject, data: bytes, start: int, end: int, opening: bytes):
        self.envelope = envelope
        """The list without `items` (kind, apiVersion, metadata with continue and RV)."""
        self._data = data
        self._start = start
        self._end = end
        self._opening = opening

    def items(self) -> Iterator[bytes]:
        """Each item's JSON, in order; decode each with `decode_item`.

        The same pieces as splitting the body at every `},` + opening (successive searches
        resume after the whole separator, as a split does), each with its braces kept.
        """
        data, start, end = self._data, self._start, self._end
        if start >= end:
            return
        separator = b"}," + self._opening
        searched_from = start
        while True:
            at = data.find(separator, searched_from, end)
            if at < 0:
                yield data[start:end]
                return
            yield data[start : at + 1]
            start = at + 2
            searched_from = at + len(separator)


def cut_list(data: bytes) -> ListPage | None:
    """`data` cut into envelope and items, or None when the cut is not provably exact."""
    first, last = _trimmed(data, 0, len(data))  # not strip(): that copies a page ending in \n
    at = data.find(_ITEMS, first, last)
    if at < 0 or not data.endswith(b"]}", first, last):
        return None  # no items key, or items is not the last key (decode whole)
    head = data[first:at].rstrip()
    if not head.endswith(b","):
        return None
    try:
        envelope = orjson.loads(head[:-1] + b"}")
    except orjson.JSONDecodeError:
        return None  # the first "items":[ is nested: not the list's own key
    if not isinstance(envelope, dict):
        return None
    start, end = _trimmed(data, at + len(_ITEMS), last - 2)
    if start == end:
        return ListPage(envelope, data, start, end, b"")
    opening_end = data.find(_METADATA, start, min(end, start + _LONGEST_OPENING))
    if not data.startswith(b"{", start, end) or opening_end < 0:
        return None
    return ListPage(envelope, data, start, end, data[start : opening_end + len(_METADATA)])


def _trimmed(data: bytes, start: int, end: int) -> tuple[int, int]:
    """`data[start:end]`'s bounds without the whitespace around it."""
    while start < end and data[start] in _WHITESPACE:
        start += 1
    while end > start and data[end - 1] in _WHITESPACE:
        end -= 1
    return start, end


def decode_item(raw: bytes) -> RawObject | None:
    """One item's object; None if this piece is not a whole JSON object (the cut was wrong)."""
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return item if isinstance(item, dict) else None


class Refused:
    """What `kept_items` gives for an item its filter refused (left undecoded)."""

    __slots__ = ()


REFUSED = Refused()


def kept_items(
    page: ListPage, keep: Callable[[bytes], bool] | None
) -> Iterator[RawObject | Refused | None]:
    """Each item of `page`, in order: decoded if `keep` accepts it (read from its bytes),
    REFUSED if not, None for a piece that is not a whole object: the cut was wrong, decode the
    answer whole instead. Refused items are handed out too, so that a caller cutting its work
    into slices can yield between them (a page can be hundreds of refused items).

    An item `keep` refuses is not decoded, so a wrong cut inside it would go unseen; that is
    still exact. A split inside an item leaves both halves unbalanced, so whichever half `keep`
    accepts fails to decode; and `keep` refuses both only when neither holds the words it looks
    for, which the split sequence cannot cut in two: then it refuses the whole item too.
    """
    for raw in page.items():
        if keep is None or keep(raw):
            yield decode_item(raw)
        else:
            yield REFUSED
