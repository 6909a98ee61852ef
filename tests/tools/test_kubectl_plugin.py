"""`kubectl hostports ...` through the real kubectl: plugin discovery, the commands over a dump and
over the fake API server (kubeconfig, context, namespace, exit codes), and shell completion."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.fakeapi import FakeApiServer
from tests.truth import sample_api_server

SAMPLES = REPO / "config" / "samples"
SAMPLE = str(SAMPLES / "cluster.yaml")
DAEMONSET = str(SAMPLES / "eks-pod-identity-agent-daemonset.yaml")
BIN = Path(sys.executable).parent
"""The virtualenv's bin, where pip put kubectl-hostports and kubectl_complete-hostports."""
NODES = [f"ip-10-0-1-1{i}.ec2.internal" for i in range(1, 6)]


def environment(**extra: str) -> dict[str, str]:
    """kubectl's environment: the virtualenv first on PATH, no colour, no stray kubeconfig."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}", "NO_COLOR": "1", **extra}


def kubectl(*argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", *argv],
        capture_output=True,
        text=True,
        env=environment(**extra),
        cwd=REPO,
        timeout=60,
        check=False,
    )


async def kubectl_async(*argv: str, **extra: str) -> tuple[int, str, str]:
    """kubectl in a child process while the fake API server serves on this event loop."""
    process = await asyncio.create_subprocess_exec(
        "kubectl", *argv, env=environment(**extra), cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def hostport_extender(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "hostport-extender"), *argv],
        capture_output=True,
        text=True,
        env=environment(),
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_kubectl_plugin_list_finds_it() -> None:
    """`kubectl plugin list` names the installed kubectl-hostports (and no warning about it)."""
    result = kubectl("plugin", "list")
    assert result.returncode == 0, result.stderr
    assert f"{BIN}/kubectl-hostports" in result.stdout.splitlines()
    assert "kubectl-hostports" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["audit"], 1),
        (["who", "ip-10-0-1-13.ec2.internal", "8125/udp"], 0),
        (["check", "-f", DAEMONSET], 1),
    ],
    ids=["audit", "who", "check"],
)
def test_kubectl_hostports_equals_the_toolbox(argv: list[str], code: int) -> None:
    """`kubectl hostports CMD` prints what `hostport-extender CMD` prints, with its exit code."""
    plugin = kubectl("hostports", *argv, "--snapshot", SAMPLE)
    direct = hostport_extender(*argv, "--snapshot", SAMPLE)
    assert (plugin.returncode, plugin.stdout) == (code, direct.stdout)
    assert direct.returncode == code
    assert plugin.stdout.strip()


def test_errors_are_one_kubectl_style_line() -> None:
    """An error is `error: ...` on one line and exit code 2; usage errors exit 2 too."""
    result = kubectl("hostports", "who", "ip-10-0-1-99", "--snapshot", SAMPLE)
    assert result.returncode == 2
    assert result.stderr == "error: node 'ip-10-0-1-99' unknown (5 nodes known)\n"
    assert result.stdout == ""
    usage = kubectl("hostports", "audit", "--snapshot", SAMPLE, "--no-such-flag")
    assert usage.returncode == 2
    assert usage.stderr.startswith("usage: kubectl hostports")
    assert "unrecognized arguments: --no-such-flag" in usage.stderr


def test_help_names_the_kubectl_command() -> None:
    """`kubectl hostports --help` shows the kubectl spelling and all three commands."""
    result = kubectl("hostports", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: kubectl hostports")
    for command in ("audit", "check", "who"):
        assert command in result.stdout


@pytest.fixture
async def cluster_api(tmp_path: Path) -> AsyncIterator[tuple[FakeApiServer, Path]]:
    """The sample cluster behind the fake API server, and a kubeconfig whose current context
    points at a dead port while context `fake` (namespace `apps`) points at the server."""
    fake = sample_api_server(tmp_path / "pki", token="operator-token")
    await fake.start()
    path = fake.write_kubeconfig(tmp_path / "kubeconfig", token="operator-token")
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    (context,) = config["contexts"]
    context["context"]["namespace"] = "apps"
    config["clusters"].append({"name": "dead", "cluster": {"server": "https://127.0.0.1:1"}})
    config["contexts"].append({"name": "dead", "context": {"cluster": "dead", "user": "tester"}})
    config["current-context"] = "dead"
    path.write_text(yaml.safe_dump(config))
    try:
        yield fake, path
    finally:
        await fake.stop()


async def test_live_cluster_by_kubeconfig_and_context(
    cluster_api: tuple[FakeApiServer, Path],
) -> None:
    """--kubeconfig with --context lists the fake server and gives the snapshot's answer;
    KUBECONFIG works as well; the kubeconfig's current (dead) context fails in one line."""
    _, kubeconfig = cluster_api
    code, out, err = await kubectl_async(
        "hostports", "audit", "-o", "json", "--kubeconfig", str(kubeconfig), "--context", "fake"
    )
    assert code == 1, err
    snapshot = hostport_extender("audit", "-o", "json", "--snapshot", SAMPLE)
    assert json.loads(out) == json.loads(snapshot.stdout)
    code, out, err = await kubectl_async(
        "hostports", "who", NODES[2], "--context", "fake", "-n", "ignored",
        KUBECONFIG=str(kubeconfig),
    )  # fmt: skip
    assert code == 0, err
    assert out == hostport_extender("who", NODES[2], "--snapshot", SAMPLE).stdout
    code, out, err = await kubectl_async("hostports", "audit", KUBECONFIG=str(kubeconfig))
    assert code == 2
    assert err.startswith("error: cannot list the cluster at https://127.0.0.1:1")
    assert err.count("\n") == 1
    assert out == ""


async def test_check_takes_the_namespace_from_the_context(
    cluster_api: tuple[FakeApiServer, Path], tmp_path: Path
) -> None:
    """A manifest without a namespace lands in the context's namespace, as `kubectl apply -f`
    would put it; -n overrides it; over a dump it is `default`."""
    _, kubeconfig = cluster_api
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "web"},
                "spec": {
                    "containers": [
                        {"name": "c", "ports": [{"containerPort": 8080, "hostPort": 8080}]}
                    ]
                },
            }
        )
    )
    live = ("--kubeconfig", str(kubeconfig), "--context", "fake")

    async def namespace_of(*argv: str) -> str:
        code, out, err = await kubectl_async(
            "hostports", "check", "-f", str(manifest), "-o", "json", *argv
        )
        assert code == 0, err
        (workload,) = json.loads(out)["workloads"]
        namespace: str = workload["namespace"]
        return namespace

    assert await namespace_of(*live) == "apps"
    assert await namespace_of(*live, "--namespace", "team-a") == "team-a"
    assert await namespace_of("-n", "team-b", *live) == "team-b"
    assert await namespace_of("--snapshot", SAMPLE) == "default"


def completions(*words: str, **extra: str) -> tuple[list[str], str]:
    """What a shell gets for `kubectl hostports WORDS...<TAB>`: candidates and the directive."""
    result = kubectl("__complete", "hostports", *words, **extra)
    assert result.returncode == 0, result.stderr
    *lines, directive = result.stdout.splitlines()
    return [line.split("\t")[0] for line in lines], directive


def test_completion_of_subcommands_flags_and_values(tmp_path: Path) -> None:
    """kubectl's plugin completion (through kubectl_complete-hostports) offers the commands,
    each command's flags, -o's formats, file names for -f, and the kubeconfig's contexts."""
    assert completions("") == (["audit", "check", "who"], ":4")
    assert completions("ch") == (["check"], ":4")
    flags, directive = completions("check", "--")
    assert {
        "--filename",
        "--namespace",
        "--snapshot",
        "--kubeconfig",
        "--context",
        "--output",
    } <= set(flags)
    assert directive == ":4"
    assert completions("audit", "--eph") == (["--ephemeral-range"], ":4")
    assert completions("who", "-o", "") == (["table", "json", "yaml"], ":4")
    assert completions("check", "-f", "") == ([], ":0")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [
                    {"name": n, "context": {"cluster": "c", "user": "u"}}
                    for n in ("prod-eu", "prod-us", "staging")
                ],
                "current-context": "staging",
            }
        )
    )
    contexts, _ = completions("audit", "--context", "prod", KUBECONFIG=str(kubeconfig))
    assert contexts == ["prod-eu", "prod-us"]


def test_completion_of_node_names_from_a_dump() -> None:
    """`who --snapshot=FILE <TAB>` offers the dump's nodes, filtered by what is typed; after
    `--snapshot FILE` argparse would take another file, so file names are offered instead."""
    assert completions("who", f"--snapshot={SAMPLE}", "") == (NODES, ":4")
    assert completions("who", f"--snapshot={SAMPLE}", "ip-10-0-1-13") == ([NODES[2]], ":4")
    assert completions("who", f"--snapshot={SAMPLE}", NODES[2], "") == ([], ":4")
    assert completions("who", "--snapshot", SAMPLE, "") == ([], ":0")
    assert completions("who", NODES[2], "-o", "json", "") == ([], ":4")
    result = kubectl("hostports", "who", f"--snapshot={SAMPLE}", NODES[2], "-o", "json")
    assert json.loads(result.stdout)["node"] == NODES[2]


async def test_completion_of_node_names_from_the_cluster(
    cluster_api: tuple[FakeApiServer, Path],
) -> None:
    """`who --kubeconfig K --context C <TAB>` lists the nodes from that cluster; an unreachable
    cluster gives no candidates and no error."""
    _, kubeconfig = cluster_api
    code, out, _ = await kubectl_async(
        "__complete", "hostports", "who", "--kubeconfig", str(kubeconfig), "--context", "fake", ""
    )
    assert code == 0
    assert out.splitlines() == [*NODES, ":4"]
    code, out, _ = await kubectl_async(
        "__complete", "hostports", "who", "--kubeconfig", str(kubeconfig), ""
    )
    assert code == 0
    assert out.splitlines() == [":4"]


def test_readme_example_runs_through_kubectl() -> None:
    """The toolbox section's `$ kubectl hostports ...` example prints what the README shows."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("<!-- section: toolbox -->", 1)[1].split("<!-- section:", 1)[0]
    examples = re.findall(r"```\n\$ kubectl (hostports [^\n]*)\n(.*?)```", section, re.DOTALL)
    assert examples
    for command, shown in examples:
        result = kubectl(*shlex.split(command))
        assert result.returncode == 0, result.stderr
        assert result.stdout == shown
