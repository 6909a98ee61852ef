"""The tools' output: the same document in JSON and YAML with a stable set of keys, aligned
tables, and colour only on a terminal without NO_COLOR."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from typing import Any

import pytest
import yaml

from extender.cli import main
from tests.conftest import REPO

SAMPLES = REPO / "config" / "samples"
SAMPLE = str(SAMPLES / "cluster.yaml")
DAEMONSET = str(SAMPLES / "eks-pod-identity-agent-daemonset.yaml")
COMMANDS = {
    "audit": ["audit"],
    "check": ["check", "-f", DAEMONSET],
    "who": ["who", "ip-10-0-1-15.ec2.internal"],
}
CLAIM_KEYS = ["protocol", "ports", "first", "last", "address", "kind", "state", "holder", "pod"]


def output(argv: list[str], fmt: str, capsys: pytest.CaptureFixture[str]) -> str:
    main([*argv, "--snapshot", SAMPLE, "-o", fmt])
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_json_and_yaml_are_the_same_document(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`-o yaml` and `-o json` carry the same data, keys in the same order."""
    as_json = json.loads(output(COMMANDS[command], "json", capsys))
    as_yaml = yaml.safe_load(output(COMMANDS[command], "yaml", capsys))
    assert as_json == as_yaml
    assert list(as_json) == list(as_yaml)


def test_schema_keys_are_stable(capsys: pytest.CaptureFixture[str]) -> None:
    """The documented keys, in order: scripts may rely on them."""
    audit = json.loads(output(COMMANDS["audit"], "json", capsys))
    assert list(audit) == [
        "clean", "nodes", "ephemeral_range", "conflicts", "risks", "protected", "unrouted",
    ]  # fmt: skip
    assert list(audit["conflicts"][0]) == ["node", "protocol", "ports", "address", "claims"]
    assert list(audit["conflicts"][0]["claims"][0]) == CLAIM_KEYS
    assert list(audit["risks"][0]) == [
        "node", "risk", "protocol", "ports", "address", "holder", "pod", "detail"
    ]  # fmt: skip
    who = json.loads(output(COMMANDS["who"], "json", capsys))
    assert list(who) == ["node", "port", "claims"]
    assert list(who["claims"][0]) == CLAIM_KEYS
    check = json.loads(output(COMMANDS["check"], "json", capsys))
    assert list(check) == ["fits", "nodes", "approximate", "workloads", "skipped"]
    assert list(check["workloads"][0]) == [
        "kind", "namespace", "name", "source", "host_ports", "replicas", "exclusive", "fits",
        "summary", "blocked", "free", "untargeted", "replacing", "would_declare", "declare_notes",
    ]  # fmt: skip


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_colour_when_piped(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Captured (not a terminal) output has no escape codes."""
    assert "\x1b[" not in output(COMMANDS[command], "table", capsys)


def run_on_terminal(argv: list[str], env: dict[str, str]) -> str:
    """Run the real command with its stdout on a pseudo-terminal; return what it printed."""
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "extender", *argv, "--snapshot", SAMPLE],
            stdout=follower,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env=env,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side closed when the process exited
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=30) in (0, 1)
    finally:
        os.close(leader)
    return b"".join(chunks).decode()


def test_colour_on_a_terminal_unless_no_color() -> None:
    """On a terminal the audit paints conflicts red; NO_COLOR turns colour off."""
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    coloured = run_on_terminal(["audit"], env)
    assert "\x1b[31m2 conflicts\x1b[0m" in coloured
    plain = run_on_terminal(["audit"], {**env, "NO_COLOR": "1"})
    assert "\x1b[" not in plain
    assert "2 conflicts" in plain


def test_audit_table_columns_line_up(capsys: pytest.CaptureFixture[str]) -> None:
    """Every row of the conflicts table starts each column where its header does."""
    lines = output(COMMANDS["audit"], "table", capsys).splitlines()
    header_at = lines.index("CONFLICTS") + 1
    header = lines[header_at]
    starts = [header.index(name) for name in ("PORT", "ADDRESS", "HELD BY", "COLLIDES WITH")]
    rows = lines[header_at + 1 : header_at + 3]
    assert len(rows) == 2
    for row in rows:
        for start in starts:
            assert row[start - 2 : start] == "  "
            assert row[start] != " "


def test_audit_table_on_the_sample(capsys: pytest.CaptureFixture[str]) -> None:
    """The summary line counts nodes, conflicts and risks."""
    text = output(COMMANDS["audit"], "table", capsys)
    assert text.splitlines()[0] == ("5 nodes, 2 conflicts, 2 risks (ephemeral range 32768-60999)")
    assert "RISKS" in text


def test_who_with_no_claims(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    """A node with nothing on it says so instead of printing an empty table."""
    dump = tmp_path / "one.json"
    dump.write_text(
        json.dumps({"kind": "Node", "metadata": {"name": "n1"}, "status": {"nodeInfo": {}}})
    )
    assert main(["who", "n1", "--snapshot", str(dump)]) == 0
    assert capsys.readouterr().out == "n1: no claims\n"


def test_check_table_summarises_long_node_lists(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a big cluster the table lists 20 nodes per status and counts the rest by reason;
    `-o json` still lists every node."""
    items: list[dict[str, Any]] = []
    for i in range(80):
        name = f"n{i:02}"
        labels = {"role": "ingress"} if i < 50 else {}
        items.append(
            {
                "kind": "Node",
                "metadata": {"name": name, "labels": labels},
                "status": {"nodeInfo": {}},
            }
        )
        if i < 25:
            ports = [{"containerPort": 80, "hostPort": 80}]
            spec = {"nodeName": name, "containers": [{"name": "c", "ports": ports}]}
            items.append(
                {"kind": "Pod", "metadata": {"name": f"web-{i}", "namespace": "w"}, "spec": spec}
            )
    dump = tmp_path / "big.json"
    dump.write_text(json.dumps({"kind": "List", "items": items}))
    manifest = tmp_path / "ds.yaml"
    manifest.write_text(
        "kind: DaemonSet\nmetadata: {name: edge}\nspec:\n  selector: {matchLabels: {app: edge}}\n"
        "  template:\n    spec:\n      nodeSelector: {role: ingress}\n"
        "      containers: [{name: c, ports: [{containerPort: 80, hostPort: 80}]}]\n"
    )
    assert main(["check", "-f", str(manifest), "--snapshot", str(dump)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "  would fail on 25 of 50 targeted nodes" in lines
    statuses = [line.split()[1] for line in lines if line.startswith("  n")]
    assert statuses.count("blocked") == 20
    assert statuses.count("free") == 20
    assert any(line.split()[:3] == ["(5", "more)", "blocked"] for line in lines)
    assert any(line.split()[:3] == ["(5", "more)", "free"] for line in lines)
    assert any("(30 nodes)  not targeted  nodeSelector role=ingress" in line for line in lines)
    main(["check", "-f", str(manifest), "--snapshot", str(dump), "-o", "json"])
    (workload,) = json.loads(capsys.readouterr().out)["workloads"]
    assert (len(workload["blocked"]), len(workload["free"]), len(workload["untargeted"])) == (
        25,
        25,
        30,
    )
