"""`hostport-extender serve` as an operator runs it: a real process on loopback."""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from extender.cli import build_parser, main
from extender.kube.snapshot import load_objects
from extender.server.serve import settings_from_args
from extender.settings import Settings
from tests.conftest import REPO, start_command

SAMPLE = REPO / "config" / "samples" / "cluster.yaml"


@pytest.fixture
def served() -> Iterator[tuple[str, str]]:
    """The sample cluster served by a real `python -m extender serve` on an ephemeral port."""
    process = start_command("serve", "--snapshot", str(SAMPLE), "--listen", "127.0.0.1:0")
    assert process.stdout is not None
    banner = process.stdout.readline()
    hint = process.stdout.readline() + process.stdout.readline()
    try:
        yield banner, hint
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_serve_prints_address_and_a_curl_that_shows_a_rejection(served: tuple[str, str]) -> None:
    """The banner names the cluster and address; the printed curl's request is rejected on the
    ingress nodes and the node that already runs the pod identity agent."""
    banner, hint = served
    assert "5 nodes, 16 pods" in banner
    url = re.search(r"on (http://127\.0\.0\.1:\d+)", banner)
    assert url is not None
    curl = re.search(r"curl -s (\S+) .* -d @(\S+)", hint)
    assert curl is not None
    assert curl.group(1) == f"{url.group(1)}/filter"
    body = (REPO / curl.group(2)).read_bytes()
    request = urllib.request.Request(
        curl.group(1), data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["NodeNames"] == ["ip-10-0-1-14.ec2.internal"]
    reasons = answer["FailedAndUnresolvableNodes"]
    assert (
        "hostPort pods of Deployment ingress-nginx/ingress-nginx-controller"
        in reasons["ip-10-0-1-11.ec2.internal"]
    )
    assert "DaemonSet kube-system/eks-pod-identity-agent" in reasons["ip-10-0-1-13.ec2.internal"]
    assert "ip-10-0-1-15.ec2.internal" in reasons


@pytest.mark.parametrize(
    ("flags", "loop_class"),
    [
        ([], "uvloop.Loop"),
        (["--event-loop", "asyncio"], "asyncio.unix_events._UnixSelectorEventLoop"),
    ],
)
def test_serve_answers_on_the_event_loop_it_is_given(flags: list[str], loop_class: str) -> None:
    """uvloop by default, the standard library's loop on request: either way the sample's
    rejection is answered, and the log names the loop the process really runs on."""
    process = start_command("serve", "--snapshot", str(SAMPLE), "--listen", "127.0.0.1:0", *flags)
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        url = re.search(r"on (http://127\.0\.0\.1:\d+)", process.stdout.readline())
        assert url is not None
        request = urllib.request.Request(
            f"{url.group(1)}/filter",
            data=(REPO / "config" / "samples" / "filter-pod-identity-agent.json").read_bytes(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["NodeNames"] == ["ip-10-0-1-14.ec2.internal"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    assert f"event loop: {loop_class}" in process.stderr.read()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["serve", "--snapshot", "/nonexistent.yaml"], "cannot read snapshot /nonexistent.yaml"),
        (["serve", "--snapshot", str(SAMPLE), "--listen", "nowhere"], "want HOST:PORT"),
        (
            ["serve", "--snapshot", str(SAMPLE), "--cluster-reserved-ports", "80/XTP"],
            "cluster_reserved_ports",
        ),
        (
            ["serve", "--snapshot", str(SAMPLE), "--event-loop", "tokio"],
            "event_loop 'tokio': choose one of uvloop, asyncio",
        ),
    ],
)
def test_serve_errors_are_one_line(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Operator mistakes end with one clear line on stderr and exit code 2, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_snapshot_formats(tmp_path: Path) -> None:
    """kubectl List (JSON or YAML), plain lists, multi-document YAML and *List kinds all load."""
    pod = {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}}
    nodes = {
        "kind": "NodeList",
        "metadata": {"resourceVersion": "7"},
        "items": [{"metadata": {"name": "n"}, "status": {"nodeInfo": {}}}],
    }
    (tmp_path / "a.json").write_text(json.dumps({"kind": "List", "items": [pod, nodes]}))
    (tmp_path / "b.yaml").write_text(
        "kind: Pod\nmetadata: {name: q}\nspec: {containers: []}\n"
        "---\n- kind: ConfigMap\n  metadata: {name: c}\n"
    )
    loaded = load_objects([tmp_path / "a.json", tmp_path / "b.yaml"])
    assert [p["metadata"]["name"] for p in loaded.pods] == ["p", "q"]
    assert [n["metadata"]["name"] for n in loaded.nodes] == ["n"]
    assert loaded.skipped == 1


def test_snapshot_garbage_is_a_clear_error(tmp_path: Path) -> None:
    """A file that is not Kubernetes objects is named in the error."""
    (tmp_path / "bad.yaml").write_text("just a string\n")
    assert main(["serve", "--snapshot", str(tmp_path / "bad.yaml")]) == 2


def test_every_setting_is_a_serve_flag(tmp_path: Path) -> None:
    """Each settings key can be given as a `serve` flag too, and the flag wins over the file."""
    changed = {
        "max_body_bytes": 4096,
        "scheduler_name": "hostport-aware-scheduler",
        "fail_open": True,
        "cluster_reserved_ports": "10250",
        "protected_ports": "80",
        "event_loop": "asyncio",
        "api_compression": True,
    }
    argv = ["serve", "--listen", "127.0.0.1:9999"]
    expected: dict[str, object] = {"listen_host": "127.0.0.1", "listen_port": 9999}
    for setting in fields(Settings):
        if setting.name in expected:
            continue
        value = changed.get(setting.name)
        if value is None:
            assert isinstance(setting.default, int | float), setting.name
            value = setting.default * 2 + 1  # a number the defaults never hold
        expected[setting.name] = value
        flag = "--" + setting.name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    config = tmp_path / "settings.yaml"
    config.write_text("in_flight_ttl_seconds: 1\nmax_connections: 7\n")
    args = build_parser().parse_args([*argv, "--config", str(config)])
    settings = settings_from_args(args)
    assert {s.name: getattr(settings, s.name) for s in fields(Settings)} == expected
