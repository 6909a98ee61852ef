"""Snapshot files that are junk, hostile or half wrong: through the loader and through `serve
--snapshot` as a real process. Fatal cases are one line naming the file (and where) with exit
code 2; wrong-shaped Nodes and Pods are skipped with one warning each and a summary line."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import orjson
import pytest
import yaml

from extender.errors import SnapshotError
from extender.kube.snapshot import MAX_WARNINGS, load_objects
from tests.conftest import start_command

ALIAS_BOMB = "a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
)
"""378 bytes that expand to 9^9 = 387,420,489 numbers."""

FATAL: list[tuple[str, bytes, str]] = [
    (
        "bomb.yaml",
        ALIAS_BOMB.encode(),
        "document 1: YAML aliases (*name) are not accepted (one at line 2, column 8)",
    ),
    ("latin1.yaml", b"kind: Pod\nmetadata: {name: caf\xe9}\n", "not YAML text: byte 31"),
    (
        "latin1.json",
        b'{"kind": "Pod", "metadata": {"name": "caf\xe9"}}',
        "not UTF-8 text: byte 41 is 0xe9",
    ),
    ("deep.json", b'{"items": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}", "nested too deeply"),
    (
        "deep.yaml",
        b"a:\n" + b"".join(b" " * i + b"- \n" for i in range(1, 3000)),
        "document 1, line 102, column 102: nested more than 100 levels deep",
    ),
    (
        "binary.yaml",
        bytes(range(256)) * 4,
        "not YAML text: byte 0: control characters are not allowed",
    ),
    (
        "object.yaml",
        b"kind: Pod\nmetadata: !!python/object:os.system {name: x}\n",
        "document 1, line 2, column 11: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object:os.system'",
    ),
    (
        "second.yaml",
        b"kind: Pod\nmetadata: {name: a}\n---\n!!python/name:os.system\n",
        "document 2, line 4, column 1: could not determine a constructor",
    ),
    (
        "date.yaml",
        b"kind: Pod\nmetadata: {creationTimestamp: !!timestamp 2026-13-45}\n",
        "document 1: month must be in 1..12",
    ),
    (
        "truncated.json",
        b'{"kind": "List", "items": [{"kind": "Pod", "metadata": {"name": "p"}}, {"kind": ',
        "not valid JSON: line 1, column 81: Expecting value",
    ),
    ("scalar.yaml", b"just a string\n", "document 1: expected Kubernetes objects, found a string"),
]


@pytest.mark.parametrize(("name", "content", "message"), FATAL, ids=[case[0] for case in FATAL])
def test_junk_files_are_one_line_errors_from_the_loader(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    """The loader raises SnapshotError: one line, naming the file, where, and why; fast."""
    path = tmp_path / name
    path.write_bytes(content)
    started = time.monotonic()
    with pytest.raises(SnapshotError) as raised:
        load_objects([path])
    assert time.monotonic() - started < 5
    assert str(raised.value).startswith(f"{path}: ")
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_junk_files_stop_serve_with_exit_2_and_one_line(tmp_path: Path) -> None:
    """`serve --snapshot JUNK` exits 2 within seconds, printing one line naming the file and no
    traceback, for every fatal case (the processes run side by side)."""
    running: list[tuple[str, str, subprocess.Popen[str]]] = []
    for name, content, message in FATAL:
        path = tmp_path / name
        path.write_bytes(content)
        running.append((str(path), message, start_command("serve", "--snapshot", str(path))))
    for shown, message, process in running:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 2, (shown, err)
        assert out == ""
        assert err.count("\n") == 1, err
        assert err.startswith(f"hostport-extender: error: {shown}: "), err
        assert message in err
        assert "Traceback" not in err


POD = {"kind": "Pod", "metadata": {"name": "ok", "uid": "u1"}, "spec": {"containers": []}}
NODE = {"kind": "Node", "metadata": {"name": "n1"}, "status": {"nodeInfo": {}}}
MALFORMED: list[tuple[object, str]] = [
    ({"kind": "Pod", "metadata": {"name": "a"}, "spec": []}, "spec is a list, not an object"),
    ({"kind": "Pod", "metadata": "a", "spec": {}}, "metadata is a string, not an object"),
    ({"kind": "Pod", "metadata": {"name": 7}}, "metadata.name is a number, not a string"),
    (
        {"kind": "Pod", "metadata": {"name": "b", "uid": 7}},
        "metadata.uid is a number, not a string",
    ),
    (
        {"kind": "Pod", "metadata": {"name": "c"}, "spec": {"nodeName": 7}},
        "spec.nodeName is a number, not a string",
    ),
    (
        {"kind": "Pod", "metadata": {"name": "d"}, "spec": {"containers": {}}},
        "spec.containers is an object, not a list",
    ),
    (
        {"kind": "Pod", "metadata": {"name": "e"}, "spec": {"containers": [{"ports": [80]}]}},
        "spec.containers[0].ports is a list, not a list of objects",
    ),
    (
        {"kind": "Pod", "metadata": {"name": "f", "annotations": ["x"]}},
        "metadata.annotations is a list, not an object",
    ),
    ({"kind": "Node", "metadata": {}}, "Node without a name"),
    (
        {"kind": "Node", "metadata": {"name": "n2"}, "status": "Ready"},
        "status is a string, not an object",
    ),
    (42, "expected an object, found a number"),
]


def malformed_list() -> bytes:
    items: list[object] = [POD, NODE, {"kind": "ConfigMap", "metadata": {"name": "c"}}]
    items += [raw for raw, _ in MALFORMED]
    return orjson.dumps({"kind": "List", "items": items})


def test_wrong_shaped_objects_are_skipped_with_one_warning_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each wrong-shaped Node or Pod is skipped with one warning naming the file and the item;
    the good objects load."""
    path = tmp_path / "mixed.json"
    path.write_bytes(malformed_list())
    with caplog.at_level(logging.WARNING, logger="extender.kube.snapshot"):
        loaded = load_objects([path])
    assert [raw["metadata"]["name"] for raw in loaded.pods] == ["ok"]
    assert [raw["metadata"]["name"] for raw in loaded.nodes] == ["n1"]
    assert (loaded.malformed, loaded.skipped) == (len(MALFORMED), len(MALFORMED) + 1)
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == len(MALFORMED)
    for index, (warning, (_, problem)) in enumerate(zip(warnings, MALFORMED, strict=True)):
        assert warning == f"{path}: items[{index + 3}] skipped: {problem}"


def test_yaml_locations_name_the_document_and_the_item(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In multi-document YAML the warning names the document and the item within it."""
    path = tmp_path / "docs.yaml"
    path.write_text(
        "kind: Pod\nmetadata: {name: a}\n---\n"
        "kind: List\nitems:\n- kind: Pod\n  metadata: {name: b}\n- kind: Pod\n  metadata: x\n"
    )
    with caplog.at_level(logging.WARNING, logger="extender.kube.snapshot"):
        loaded = load_objects([path])
    assert [raw["metadata"]["name"] for raw in loaded.pods] == ["a", "b"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: document 2, items[1] skipped: metadata is a string, not an object"
    ]


def test_warnings_stop_after_a_hundred(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file of thousands of malformed objects warns about the first hundred, then once."""
    path = tmp_path / "many.json"
    path.write_bytes(orjson.dumps([{"kind": "Pod", "metadata": "x"}] * 5000))
    with caplog.at_level(logging.WARNING, logger="extender.kube.snapshot"):
        loaded = load_objects([path])
    assert loaded.malformed == 5000
    assert len(caplog.records) == MAX_WARNINGS + 1


def test_serve_warns_skips_and_summarises(tmp_path: Path) -> None:
    """`serve --snapshot` on a half-wrong file serves the good objects, warns once per bad one
    and logs a summary line of what it loaded and skipped."""
    path = tmp_path / "mixed.json"
    path.write_bytes(malformed_list())
    process = start_command(
        "serve", "--snapshot", str(path), "--listen", "127.0.0.1:0", "--log-format", "text"
    )
    assert process.stdout is not None
    banner = process.stdout.readline()
    process.terminate()
    _, err = process.communicate(timeout=20)
    assert "1 nodes, 1 pods" in banner
    lines = err.splitlines()
    assert sum(f"{path}: items[" in line and "skipped:" in line for line in lines) == len(MALFORMED)
    assert any(
        line.endswith(
            f"snapshot: loaded 1 nodes and 1 pods from 1 file; skipped {len(MALFORMED)} "
            "malformed (warned above), 1 of other kinds"
        )
        for line in lines
    ), err
    assert "Traceback" not in err


def test_yaml_values_are_those_of_safe_load(tmp_path: Path) -> None:
    """Objects read from YAML events equal what `yaml.safe_load` builds: the sample cluster and
    scalars of every implicit type, quoted and tagged."""
    sample = Path(__file__).resolve().parents[2] / "config" / "samples" / "cluster.yaml"
    expected = [
        item
        for document in yaml.safe_load_all(sample.read_text())
        if document
        for item in document.get("items", [document])
    ]
    loaded = load_objects([sample])
    assert [*loaded.nodes, *loaded.pods] == [
        *(raw for raw in expected if raw.get("kind") == "Node"),
        *(raw for raw in expected if raw.get("kind") == "Pod"),
    ]
    scalars = (
        "kind: Pod\nmetadata:\n  name: p\n  annotations: {a: '1', b: \"yes\", c: !!str 3}\n"
        "spec:\n  containers: []\n  x: [1, -2, 0x1f, 0o17, 1.5, .inf, ~, null, true, no, yes,\n"
        "      2026-11-01, 2026-11-01T00:00:00Z, !!binary aGk=, !!float '2', 'quoted',\n"
        "      plain text]\n"
        "  ? complex\n  : key\n"
    )
    path = tmp_path / "scalars.yaml"
    path.write_text(scalars)
    assert load_objects([path]).pods == [yaml.safe_load(scalars)]
