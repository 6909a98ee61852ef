"""Snapshot mode: Nodes and Pods from `kubectl get nodes,pods -A -o json|yaml` dumps.

Accepts a `v1 List` (or any object with `items`), a single object, a plain JSON/YAML list, and
multi-document YAML, in any number of files. Objects of other kinds are skipped.

Objects are handed to the sinks one at a time and dropped: a 50,000-pod dump decoded whole is
over a gigabyte of dicts, of which the index keeps a few fields. JSON is decoded item by item
with the standard library's C scanner (`raw_decode`), which is as fast per item as orjson over
the whole file and never holds more than one item; YAML with libyaml (`CSafeLoader`) when
available, one document at a time, with aliases refused (an alias bomb of 564 bytes expands to
10^9 items). A file that cannot be read is one `SnapshotError` line naming the file and where;
a Node or Pod of the wrong shape is skipped with one warning naming the file and the item.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from extender.core.sinks import ObjectSink, RawObject
from extender.errors import SnapshotError, json_type_name

log = logging.getLogger(__name__)

MAX_WARNINGS = 100
"""Malformed objects warned about one by one; past this, one line counts the rest."""
MAX_DEPTH = 100
"""Deepest YAML nesting read; Kubernetes objects nest about 10 levels (libyaml stops at 1000,
Python's recursion limit may come first: this bound makes the error the same every time)."""

_SPACE = re.compile(r"[ \t\n\r]*")
_LEADING_SPACE = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\n\r]*")
_SCAN = json.JSONDecoder().raw_decode
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser when PyYAML was built with it (the Debian and PyPI wheels are)."""


class _AliasError(yaml.YAMLError):
    def __init__(self, mark: Any) -> None:
        super().__init__("YAML aliases are not accepted")
        self.problem_mark = mark


_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"


class _YamlEvents:
    """Plain YAML values built straight from the parser's events, a List's items one by one.

    Not `yaml.load_all`: that builds a whole document (a `kubectl get -o yaml` dump is one
    document: 264 MB of YAML grew past 5 GB) and expands aliases (each may stand for an
    arbitrarily large subtree, the "billion laughs"); kubectl never writes aliases, so one is an
    error here. Scalars are resolved and constructed by the safe loader's own tables; any tag
    outside them (`!!python/object`...) is refused as `yaml.safe_load` would.
    """

    def __init__(self, data: str | BinaryIO) -> None:
        self.loader = _BaseLoader(data)
        self.document = 0
        # The stubs leave the parser untyped; events are read through these two.
        self._get: Callable[[], Any] = self.loader.get_event
        self._resolve: Callable[[type[yaml.Node], str, tuple[bool, bool]], str] = (
            self.loader.resolve
        )

    def objects(self, path: Path) -> Iterator[tuple[str, Any]]:
        get = self._get
        get()  # StreamStartEvent
        while not isinstance(event := get(), yaml.StreamEndEvent):  # DocumentStartEvent
            self.document += 1
            where = f"document {self.document}"
            event = get()
            if isinstance(event, yaml.MappingStartEvent):
                self._check_tag(event, _MAP)
                yield from self._document_mapping(path, where)
            elif isinstance(event, yaml.SequenceStartEvent):
                self._check_tag(event, _SEQ)
                index = 0
                while not isinstance(event := get(), yaml.SequenceEndEvent):
                    yield from _flatten(self._value(event), f"{where}[{index}]", path)
                    index += 1
            else:
                value = self._value(event)
                if value is not None:
                    raise SnapshotError(
                        f"{path}: {where}: expected Kubernetes objects, found "
                        f"{json_type_name(value)}"
                    )
            get()  # DocumentEndEvent

    def _document_mapping(self, path: Path, where: str) -> Iterator[tuple[str, Any]]:
        """A document that is a mapping: a List's items as they come, else the one object."""
        get = self._get
        members: dict[Any, Any] = {}
        streamed = False
        while not isinstance(event := get(), yaml.MappingEndEvent):
            key = self._key(event)
            value_event = get()
            if key == "items" and isinstance(value_event, yaml.SequenceStartEvent):
                self._check_tag(value_event, _SEQ)
                streamed = True
                index = 0
                while not isinstance(event := get(), yaml.SequenceEndEvent):
                    yield from _flatten(self._value(event), f"{where}, items[{index}]", path)
                    index += 1
            else:
                members[key] = self._value(value_event)
        if not streamed:
            yield from _flatten(members, where, path)

    def _value(self, event: Any, depth: int = 0) -> Any:
        get = self._get
        if isinstance(event, yaml.ScalarEvent):
            return self._scalar(event)
        if depth >= MAX_DEPTH and isinstance(event, yaml.CollectionStartEvent):
            mark: Any = event.start_mark  # the stubs' Mark is not libyaml's
            raise yaml.constructor.ConstructorError(
                None, None, f"nested more than {MAX_DEPTH} levels deep", mark
            )
        if isinstance(event, yaml.MappingStartEvent):
            self._check_tag(event, _MAP)
            members: dict[Any, Any] = {}
            while not isinstance(key_event := get(), yaml.MappingEndEvent):
                key = self._key(key_event)
                members[key] = self._value(get(), depth + 1)
            return members
        if isinstance(event, yaml.SequenceStartEvent):
            self._check_tag(event, _SEQ)
            items: list[Any] = []
            while not isinstance(item_event := get(), yaml.SequenceEndEvent):
                items.append(self._value(item_event, depth + 1))
            return items
        if isinstance(event, yaml.AliasEvent):
            raise _AliasError(event.start_mark)
        raise yaml.constructor.ConstructorError(
            None, None, f"unexpected {type(event).__name__}", event.start_mark
        )

    def _key(self, event: Any) -> Any:
        key = self._value(event)
        if isinstance(key, dict | list):
            raise yaml.constructor.ConstructorError(
                None, None, "found unhashable key", event.start_mark
            )
        return key

    def _scalar(self, event: Any) -> Any:
        tag = event.tag
        if tag is None or tag == "!":
            tag = self._resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag == _STR:
            return event.value
        constructor = self.loader.yaml_constructors.get(tag)
        if constructor is None or tag in (_SEQ, _MAP):
            raise self._undefined(tag, event)
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        return constructor(self.loader, node)

    def _check_tag(self, event: Any, default: str) -> None:
        if event.tag not in (None, "!", default):
            raise self._undefined(event.tag, event)

    @staticmethod
    def _undefined(tag: str | None, event: Any) -> yaml.YAMLError:
        return yaml.constructor.ConstructorError(
            None, None, f"could not determine a constructor for the tag {tag!r}", event.start_mark
        )

    def dispose(self) -> None:
        self.loader.dispose()


@dataclass(frozen=True, slots=True)
class SnapshotObjects:
    nodes: list[RawObject]
    pods: list[RawObject]
    skipped: int = 0
    """Objects not loaded: of other kinds, or malformed."""
    malformed: int = 0


@dataclass(slots=True)
class LoadSummary:
    """What a load read: counts for the summary line."""

    files: int = 0
    nodes: int = 0
    pods: int = 0
    other_kinds: int = 0
    malformed: int = 0

    def line(self) -> str:
        files = "1 file" if self.files == 1 else f"{self.files} files"
        text = f"snapshot: loaded {self.nodes} nodes and {self.pods} pods from {files}"
        skipped = []
        if self.malformed:
            skipped.append(f"{self.malformed} malformed (warned above)")
        if self.other_kinds:
            skipped.append(f"{self.other_kinds} of other kinds")
        return text + (f"; skipped {', '.join(skipped)}" if skipped else "")


@dataclass(slots=True)
class _ListSink:
    objects: list[RawObject] = field(default_factory=list)

    def upsert(self, raw: RawObject) -> None:
        self.objects.append(raw)

    def delete(self, raw: RawObject) -> None:  # pragma: no cover - a load never deletes
        raise NotImplementedError

    def replace(self, raws: list[RawObject]) -> None:  # pragma: no cover - nor replaces
        raise NotImplementedError


def load_objects(paths: Sequence[Path | str]) -> SnapshotObjects:
    """Every Node and Pod of the files, as lists; raise SnapshotError for an unreadable file."""
    nodes, pods = _ListSink(), _ListSink()
    summary = load_into(paths, nodes, pods)
    skipped = summary.other_kinds + summary.malformed
    return SnapshotObjects(nodes.objects, pods.objects, skipped, summary.malformed)


def load_into(paths: Sequence[Path | str], nodes: ObjectSink, pods: ObjectSink) -> LoadSummary:
    """Feed every Node and Pod of the files to the sinks, one object at a time."""
    summary = LoadSummary()
    for path in map(Path, paths):
        summary.files += 1
        for where, raw in _objects_in(path):
            kind = _kind_of(raw)
            if kind not in ("Node", "Pod"):
                if isinstance(raw, dict):
                    summary.other_kinds += 1
                    continue
                problem: str | None = f"expected an object, found {json_type_name(raw)}"
            else:
                problem = _shape_problem(kind, raw)
            if problem is not None:
                summary.malformed += 1
                if summary.malformed <= MAX_WARNINGS:
                    log.warning("%s: %s skipped: %s", path, where or "the object", problem)
                elif summary.malformed == MAX_WARNINGS + 1:
                    log.warning("%s: more malformed objects: not shown one by one", path)
                continue
            if kind == "Node":
                summary.nodes += 1
                nodes.upsert(raw)
            else:
                summary.pods += 1
                pods.upsert(raw)
    return summary


def _objects_in(path: Path) -> Iterator[tuple[str, Any]]:
    """(where in the file, object) for every object of `path`, Lists flattened."""
    try:
        stream = path.open("rb")
    except OSError as error:
        raise SnapshotError(f"cannot read snapshot {path}: {error.strerror or error}") from error
    with stream:
        try:
            head = stream.read(4096)
            leading = _LEADING_SPACE.match(head)
            start = leading.end() if leading else 0
            if head[start : start + 1] not in (b"{", b"["):
                stream.seek(0)  # YAML: libyaml reads the file in chunks, no copy stays around
                yield from _yaml_objects(path, stream)
                return
            stream.seek(0)
            data = stream.read()
        except OSError as error:
            raise SnapshotError(f"cannot read snapshot {path}: {error.strerror}") from error
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SnapshotError(
            f"{path}: not UTF-8 text: byte {error.start} is {data[error.start]:#04x}"
        ) from error
    del data  # the text alone from here: one copy of the file, not two
    yielded = False
    try:
        for where, value in _json_values(text):
            yielded = True
            yield from _flatten(value, where, path)
        return
    except json.JSONDecodeError as error:
        if yielded or not _might_be_yaml(text):
            raise SnapshotError(
                f"{path}: not valid JSON: line {error.lineno}, column {error.colno}: {error.msg}"
            ) from error
    except RecursionError as error:
        raise SnapshotError(f"{path}: nested too deeply to be Kubernetes objects") from error
    yield from _yaml_objects(path, text)


def _might_be_yaml(text: str) -> bool:
    """A flow-style YAML document (`{kind: Pod}`) starts like JSON; a JSON file is not small."""
    return len(text) < 1 << 20


_Scan = Generator[tuple[str, Any], None, int]
"""Yields (where, value) pairs, returns the position after what it scanned."""


def _skip(text: str, position: int) -> int:
    """The position of the next non-whitespace character at or after `position`."""
    match = _SPACE.match(text, position)
    return match.end() if match else position


def _json_values(text: str) -> Iterator[tuple[str, Any]]:
    """The top-level JSON value, a List's `items` (or a top-level array) one at a time."""
    position = _skip(text, 0)
    if text.startswith("{", position):
        position = yield from _json_object(text, position)
    elif text.startswith("[", position):
        position = yield from _json_array(text, position, "")
    end = _skip(text, position)
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)


def _json_array(text: str, position: int, prefix: str) -> _Scan:
    """Yield the elements of the array at `position`; return the position after it."""
    position = _skip(text, position + 1)
    if text.startswith("]", position):
        return position + 1
    index = 0
    while True:
        value, position = _SCAN(text, position)
        yield f"{prefix}[{index}]", value
        index += 1
        position = _skip(text, position)
        if text.startswith(",", position):
            position = _skip(text, position + 1)
        elif text.startswith("]", position):
            return position + 1
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", text, position)


def _json_object(text: str, position: int) -> _Scan:
    """Yield a List's items as they decode, or else the whole object; return the end."""
    members: dict[str, Any] = {}
    streamed = False
    position = _skip(text, position + 1)
    if not text.startswith("}", position):
        while True:
            if not text.startswith('"', position):
                raise json.JSONDecodeError(
                    "Expecting property name enclosed in double quotes", text, position
                )
            key, position = _SCAN(text, position)
            position = _skip(text, position)
            if not text.startswith(":", position):
                raise json.JSONDecodeError("Expecting ':' delimiter", text, position)
            position = _skip(text, position + 1)
            if key == "items" and text.startswith("[", position):
                streamed = True
                position = yield from _json_array(text, position, "items")
            else:
                members[key], position = _SCAN(text, position)
            position = _skip(text, position)
            if text.startswith(",", position):
                position = _skip(text, position + 1)
            elif text.startswith("}", position):
                break
            else:
                raise json.JSONDecodeError("Expecting ',' delimiter", text, position)
    if not streamed:
        yield "", members
    return position + 1


def _yaml_objects(path: Path, data: str | BinaryIO) -> Iterator[tuple[str, Any]]:
    events = _YamlEvents(data)
    try:
        yield from events.objects(path)
    except _AliasError as error:
        raise SnapshotError(
            f"{path}: document {events.document}: YAML aliases (*name) are not accepted (one "
            f"at{_at(error.problem_mark).removeprefix(',')}): kubectl never writes them, and "
            "each can expand without bound"
        ) from error
    except yaml.MarkedYAMLError as error:
        problem = error.problem or error.context or "cannot be parsed"
        raise SnapshotError(
            f"{path}: document {max(events.document, 1)}{_at(error.problem_mark)}: "
            f"{_one_line(problem)}"
        ) from error
    except yaml.reader.ReaderError as error:
        raise SnapshotError(
            f"{path}: not YAML text: byte {error.position}: {_one_line(error.reason)}"
        ) from error
    except yaml.YAMLError as error:
        raise SnapshotError(
            f"{path}: document {events.document}: {_one_line(str(error))}"
        ) from error
    except RecursionError as error:
        raise SnapshotError(
            f"{path}: document {events.document}: nested too deeply to be Kubernetes objects"
        ) from error
    except (ValueError, TypeError, OverflowError) as error:  # e.g. !!timestamp 2026-13-45
        raise SnapshotError(
            f"{path}: document {events.document}: {_one_line(str(error))}"
        ) from error
    finally:
        events.dispose()


def _at(mark: yaml.Mark | None) -> str:
    return f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:200]


def _flatten(value: Any, where: str, path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (where, object) for an object, or for each object of a list or a List."""
    if value is None:
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{where}[{index}]", path)
        return
    if isinstance(value, dict):
        items = value.get("items")
        if isinstance(items, list) and "spec" not in value:  # a List, PodList, NodeList...
            joined = f"{where}, items" if where.startswith("document") else f"{where}.items"
            yield from _flatten(items, joined.removeprefix("."), path)
            return
    yield where, value


def _kind_of(raw: Any) -> str:
    if not isinstance(raw, dict):
        return ""
    kind = raw.get("kind")
    if isinstance(kind, str):
        return kind
    spec = raw.get("spec")
    if isinstance(spec, dict) and "containers" in spec:
        return "Pod"
    status = raw.get("status")
    return "Node" if isinstance(status, dict) and "nodeInfo" in status else ""


def _shape_problem(kind: str, raw: RawObject) -> str | None:
    """Why the index cannot take this Node or Pod, or None: the fields it reads, by type."""
    metadata = raw.get("metadata")
    if not isinstance(metadata, dict):
        return f"metadata is {json_type_name(metadata)}, not an object"
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        return f"{kind} without a name" if name in (None, "") else _wrong("metadata.name", name)
    for key in ("namespace", "uid"):
        if metadata.get(key) is not None and not isinstance(metadata[key], str):
            return _wrong(f"metadata.{key}", metadata[key])
    for key in ("annotations", "labels"):
        if metadata.get(key) is not None and not isinstance(metadata[key], dict):
            return _wrong(f"metadata.{key}", metadata[key], "an object")
    for key in ("spec", "status"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            return _wrong(key, raw[key], "an object")
    if kind == "Pod":
        return _pod_spec_problem(raw.get("spec") or {})
    return None


def _pod_spec_problem(spec: dict[str, Any]) -> str | None:
    for key in ("nodeName", "schedulerName"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            return _wrong(f"spec.{key}", spec[key])
    for key in ("containers", "initContainers"):
        containers = spec.get(key)
        if containers is None:
            continue
        if not isinstance(containers, list):
            return _wrong(f"spec.{key}", containers, "a list")
        for index, container in enumerate(containers):
            if not isinstance(container, dict):
                return _wrong(f"spec.{key}[{index}]", container, "an object")
            ports = container.get("ports")
            if ports is not None and (
                not isinstance(ports, list) or not all(isinstance(p, dict) for p in ports)
            ):
                return _wrong(f"spec.{key}[{index}].ports", ports, "a list of objects")
    return None


def _wrong(field_name: str, value: object, want: str = "a string") -> str:
    return f"{field_name} is {json_type_name(value)}, not {want}"
