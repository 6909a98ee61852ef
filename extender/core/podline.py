"""Read a raw pod watch line just far enough to know that it cannot touch the port index.

Pure. Most watch events of a busy cluster are pods that claim no host port (status updates,
other workloads): decoding each 4-10 kB line with orjson and looking at its fields cost ~35 us
of the event loop's time. A pod can claim a host port only through `hostNetwork`, a `hostPort`
or a `hostports.dev/...` annotation; if none of these words occurs anywhere in the line, its
pod claims nothing, and only its UID (is it one we hold?) and resourceVersion (where the watch
resumes) matter. Both are read from the flat head of `metadata`, exactly, or not at all.

Exactness rests on how the API server writes JSON (Go's encoding/json): struct fields in
declaration order (`{"type":..,"object":{"kind":..,"apiVersion":..,"metadata":{"name":..,
"namespace":..,"uid":..,"resourceVersion":..`), no escapes of ASCII letters or `/`, and `"`
inside strings always escaped. So the words cannot hide behind escapes, and a `"uid":"` met
before the first `{`, `[` or `}` inside `metadata` is metadata's own key (and its only one: Go
writes each field of a struct once). Any other shape (keys in another order, a missing UID, a
truncated line) answers None: decode the line in full.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from extender.core.pods import TERMINAL_PHASES

PORT_WORDS = re.compile(rb"host(?:Network|Port|ports\.dev)")
"""A pod claims host ports only through these fields and annotations (see pods.may_hold_ports);
one regular-expression pass over the line is ~2x faster than three substring searches."""


def may_claim_ports(raw: bytes) -> bool:
    """Whether the JSON of a pod (a list item, a watch line) names a way to claim a host port;
    False means its pod claims none, whatever else it says."""
    return PORT_WORDS.search(raw) is not None


_POD_HEAD = (
    rb'(?:"kind":"Pod","apiVersion":"v1",)?'
    rb'"metadata":\{(?:"(?:name|generateName|namespace|selfLink)":"[^"\\]*",)*'
    rb'"uid":"([^"\\]+)","resourceVersion":"([^"\\]+)"'
    rb'(?:,"(?!uid"|resourceVersion")[^"\\]*":(?:"[^"\\]*"|-?[0-9]+))*'
    rb'(?:\}|,"(?!uid"|resourceVersion")[^"\\]*":[\[{])'
)
"""A pod object's head as the API server writes it, after its opening brace, up to metadata's
first nested value or its end: kind and apiVersion (list items leave them out), then
ObjectMeta's flat fields in Go's declaration order (name, generateName, namespace, selfLink,
then uid and resourceVersion side by side, then scalars such as creationTimestamp), each string
free of escapes, neither key twice."""
_EVENT_HEAD = re.compile(rb'\{"type":"(ADDED|MODIFIED|DELETED)","object":\{' + _POD_HEAD)
"""A pod watch line's head: the event type, then the object's head."""
_ITEM_HEAD = re.compile(rb"\{" + _POD_HEAD)
"""A pod list item's head."""
_EVENT_TYPES = {kind.encode(): kind for kind in ("ADDED", "MODIFIED", "DELETED")}


class PodEventHead(NamedTuple):
    """What a pod watch line says before its object's first nested value, read from the raw
    line; with `may_claim_ports` False, all that matters of the event. (A tuple: made for
    every pod event, at a third of a frozen dataclass's cost.)"""

    type: str
    uid: str
    resource_version: str


def portless_pod_event(line: bytes) -> PodEventHead | None:
    """The event on `line` if its pod cannot claim a host port; None if it must be decoded."""
    if may_claim_ports(line):
        return None
    return pod_event_head(line)


def pod_event_head(line: bytes) -> PodEventHead | None:
    """The event type, UID and resourceVersion of a pod watch line, read from the flat head of
    its metadata (None: not in the API server's shape; decode it). Says nothing of its ports.

    Not a JSON validator: a line is only checked to end like an event (`}}`); the API server
    sends whole, valid lines, and one that lies about its shape is the decoder's to reject.
    Every pod event passes here: read with one match of `_EVENT_HEAD` from the line's start, a
    4 kB busy-cluster line took 2.0 us in-process, against 2.9 for bounded finds over the head,
    field by field, in the same run.
    """
    if not line.endswith(b"}}") and not line.rstrip().endswith(b"}}"):
        return None  # (rstrip copies the line: only for the rare line with trailing space)
    head = _EVENT_HEAD.match(line)
    if head is None:
        return None
    kind, uid, resource_version = head.groups()
    try:
        return PodEventHead(_EVENT_TYPES[kind], uid.decode(), resource_version.decode())
    except UnicodeDecodeError:
        return None  # not UTF-8: the decoder rejects the line


def list_item_uid(item: bytes) -> str | None:
    """The UID of a pod list item, from the flat head of its metadata (None: not found, or not
    in the API server's shape)."""
    head = _ITEM_HEAD.match(item)
    if head is None:
        return None
    try:
        return head.group(1).decode()
    except UnicodeDecodeError:
        return None


_SPEC = b',"spec":{'
_STATUS = b'},"status":{'
_PORT_ANNOTATIONS = re.compile(rb'"hostports\.dev/(?:listen|protected)":"(?:[^"\\]|\\.)*"')
_PHASE = re.compile(rb'"phase":"[^"\\]*"')
_TERMINAL_PHASES = frozenset(b'"phase":"%s"' % phase.encode() for phase in TERMINAL_PHASES)


def raw_port_shape(line: bytes) -> int | None:
    """A digest of the raw bytes of everything `decode_pod` reads beyond the UID (None: the
    line is not in the shape this relies on), for a pod watch line or a pod list item (the
    same object state gives the same digest in both).

    The same fields as the cluster's decoded-object digest: the whole spec, the two
    `hostports.dev/` annotations and whether the phase is terminal (the decoder reads nothing
    else of it: a pod's Pending -> Running update is skipped too, while Succeeded or Failed,
    which release its ports, is decoded). In the API server's key order an object is
    metadata, spec, status: the first `,"spec":{` is the spec's key (metadata holds no other
    unescaped `"spec"`; managedFields say `"f:spec"`), and the last `},"status":{` closes the
    spec (status is the last key). Anything the cut includes by mistake (a nested "status" in
    the status, a label named like the annotations) only makes the digest change more often,
    never less: a changed pod is always decoded.
    """
    spec_at = line.find(_SPEC)
    status_at = line.rfind(_STATUS)
    if spec_at < 0 or status_at < spec_at:
        return None
    phase = _PHASE.search(line, status_at)
    return hash(
        (
            line[spec_at:status_at],
            tuple(_PORT_ANNOTATIONS.findall(line, 0, spec_at)),
            phase.group() in _TERMINAL_PHASES if phase is not None else None,
        )
    )


def _string_field(data: bytes, key: bytes, start: int, end: int) -> str | None:
    """The value of `key` among the flat JSON members in data[start:end], if it occurs there
    once as a plain string."""
    at = data.find(key, start, end)
    if at < 0 or data.find(key, at + len(key), end) >= 0:
        return None  # absent, or a duplicate key (orjson would take the last one)
    first = at + len(key)
    if first >= end or data[first] != 0x22:  # '"'
        return None  # not a string
    last = data.find(b'"', first + 1, end)
    if last < 0:
        return None
    raw = data[first + 1 : last]
    if not raw or b"\\" in raw:
        return None  # empty, or escapes: leave them to the decoder
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None  # not UTF-8: the decoder rejects the line
