"""config/monitoring proven with the real tools: promtool checks and unit-tests the rules, a real
Prometheus scrapes a running extender and evaluates them, and the Grafana dashboard queries only
metrics that running servers really export.

promtool and prometheus come from Debian's `prometheus` package (`scripts/system-deps`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from extender.kube.snapshot import load_objects
from tests.conftest import REPO, start_command
from tests.fakeapi import FakeApiServer, Pki, eventually
from tests.pki import SERVICE_NAME, make_pki
from tests.webhook.test_webhook import pod, review

MONITORING = REPO / "config" / "monitoring"
UNIT_TESTS = Path(__file__).parent / "promtool" / "rules-test.yaml"
RULES_NAME = "hostport-extender-rules.yaml"
SAMPLE = REPO / "config" / "samples" / "cluster.yaml"
FILTER_REQUEST = REPO / "config" / "samples" / "filter-pod-identity-agent.json"
NEVER = "vector(1) < 0"
ALWAYS = "vector(1)"


def rule_groups() -> list[dict[str, Any]]:
    """The groups of the PrometheusRule, as Prometheus loads them from a rules file."""
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def alert_names() -> list[str]:
    return [r["alert"] for g in rule_groups() for r in g["rules"] if "alert" in r]


def recorded_names() -> list[str]:
    return [r["record"] for g in rule_groups() for r in g["rules"] if "record" in r]


def write_rules(directory: Path, groups: list[dict[str, Any]]) -> Path:
    path = directory / RULES_NAME
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def promtool(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *argv], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def unit_test(directory: Path, groups: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` of the project's unit tests against `groups`."""
    write_rules(directory, groups)
    (directory / UNIT_TESTS.name).write_text(UNIT_TESTS.read_text())
    return promtool("test", "rules", UNIT_TESTS.name, cwd=directory)


def test_promtool_checks_the_extracted_rules(tmp_path: Path) -> None:
    """`promtool check rules` accepts every rule of the PrometheusRule."""
    write_rules(tmp_path, rule_groups())
    result = promtool("check", "rules", RULES_NAME, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(alert_names()) + len(recorded_names())
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    """The synthetic-series unit tests pass against the shipped rules."""
    result = unit_test(tmp_path, rule_groups())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """Each alert is expected to fire in some test and to stay quiet in another; each recording
    rule's value is checked."""
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fires == set(alert_names())
    assert quiet == set(alert_names())
    checked = {
        name
        for case in tests
        for check in case.get("promql_expr_test", [])
        for name in RECORDED.findall(check["expr"])
    }
    assert checked == set(recorded_names())


def with_expr(name: str, expr: str) -> list[dict[str, Any]]:
    groups = rule_groups()
    for group in groups:
        for item in group["rules"]:
            if item.get("alert", item.get("record")) == name:
                item["expr"] = expr
    return groups


@pytest.mark.parametrize("replacement", [NEVER, ALWAYS], ids=["never-fires", "always-fires"])
@pytest.mark.parametrize("alert", alert_names())
def test_unit_tests_catch_a_broken_alert(alert: str, replacement: str, tmp_path: Path) -> None:
    """An alert whose expression never fires, or always fires, fails the unit tests by name."""
    result = unit_test(tmp_path, with_expr(alert, replacement))
    assert result.returncode != 0
    assert f"alertname: {alert}," in result.stdout + result.stderr


def free_port() -> int:
    """A loopback port nobody holds right now, for Prometheus (it cannot report a port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM the child we started (its PID) and reap it; SIGKILL if it does not go."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@dataclass(frozen=True, slots=True)
class Scraped:
    """A running Prometheus and the `serve --snapshot` it scrapes."""

    prometheus: str
    extender: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = get_json(
            f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        )
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    """`serve --snapshot` on the sample, scraped every second by a real Prometheus (its own temp
    dir, 127.0.0.1 only) that evaluates the shipped rules every second."""
    directory = tmp_path_factory.mktemp("prometheus")
    extender = start_command("serve", "--snapshot", str(SAMPLE), "--listen", "127.0.0.1:0")
    prometheus: subprocess.Popen[str] | None = None
    try:
        assert extender.stdout is not None
        found = re.search(r"on http://(127\.0\.0\.1:\d+)", extender.stdout.readline())
        assert found is not None
        write_rules(directory, rule_groups())
        # Prometheus hands discovered targets to its scrapers every 5 s (fixed in 2.42), so
        # the first scrape comes about 5 s after it is ready, whatever the interval.
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [RULES_NAME],
            "scrape_configs": [
                {
                    "job_name": "hostport-extender",
                    "static_configs": [
                        {
                            "targets": [found[1]],
                            "labels": {"namespace": "hostport-system", "pod": "extender-e2e"},
                        }
                    ],
                }
            ],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        address = f"127.0.0.1:{free_port()}"
        prometheus = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={address}",
            ],
            cwd=directory,
            stdout=subprocess.DEVNULL,
            stderr=(directory / "prometheus.log").open("w"),
            text=True,
        )
        url = f"http://{address}"
        deadline = time.monotonic() + 30
        while True:
            assert prometheus.poll() is None, (directory / "prometheus.log").read_text()
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/-/ready", timeout=1).close()
                break
            assert time.monotonic() < deadline, "Prometheus not ready in 30 s"
            time.sleep(0.1)
        yield Scraped(url, f"http://{found[1]}")
    finally:
        if prometheus is not None:
            stop(prometheus)
        stop(extender)


def post_filter(extender: str) -> None:
    request = urllib.request.Request(
        f"{extender}/filter",
        data=FILTER_REQUEST.read_bytes(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def until(condition: Any, timeout: float = 20.0) -> Any:
    """Poll `condition()` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.25)
    return value


def test_prometheus_scrapes_the_extender_and_records_its_rates(scraped: Scraped) -> None:
    """With filter calls arriving, the recording rules yield the extender's request rate and its
    rejections by claim kind, labelled with the scrape's namespace and pod; every rule evaluates
    without error, and the one alert pending is the sample's real port conflict."""

    def recorded() -> list[dict[str, Any]]:
        post_filter(scraped.extender)
        return scraped.query(
            'namespace_pod_verb_code:hostport_extender_requests:rate5m{verb="filter"} > 0'
        )

    (sample,) = until(recorded)
    assert sample["metric"] == {
        "__name__": "namespace_pod_verb_code:hostport_extender_requests:rate5m",
        "namespace": "hostport-system",
        "pod": "extender-e2e",
        "verb": "filter",
        "code": "200",
    }
    rejections = scraped.query("reason:hostport_extender_filter_rejections:rate5m")
    assert {s["metric"]["reason"] for s in rejections} >= {"hostPort"}
    (p99,) = scraped.query(
        'namespace_pod_verb:hostport_extender_request_duration_seconds:p99_rate5m{verb="filter"}'
    )
    assert 0 < float(p99["value"][1]) < 5
    rules = get_json(f"{scraped.prometheus}/api/v1/rules")["data"]["groups"]
    evaluated = {r["name"]: r for g in rules for r in g["rules"]}
    assert set(evaluated) == set(alert_names()) | set(recorded_names())
    assert all(r["health"] == "ok" for r in evaluated.values()), evaluated
    # The sample has a real conflict on ip-10-0-1-15 (see the README's audit): that alert, and
    # only it, is pending (its `for` is 10 minutes).
    alerts = get_json(f"{scraped.prometheus}/api/v1/alerts")["data"]["alerts"]
    assert [(a["labels"]["alertname"], a["labels"].get("node"), a["state"]) for a in alerts] == [
        ("HostportNodePortConflict", "ip-10-0-1-15.ec2.internal", "pending")
    ]


def dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "hostport-extender-dashboard.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


RECORDED = re.compile(r"\b[a-z_]+:[a-z_]+:[a-z0-9_]+")
"""A recorded series' name (level:metric:operations)."""


def used_metrics(expr: str) -> set[str]:
    """The extender's metric names an expression reads (recorded names left out)."""
    return set(re.findall(r"\bhostport_extender_\w+", RECORDED.sub("", expr)))


def sample_names(text: str) -> set[str]:
    """Names of the samples in a /metrics body (comments skipped)."""
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def test_every_dashboard_query_runs_in_prometheus(scraped: Scraped) -> None:
    """Prometheus accepts every panel's query; those on metrics the snapshot extender exports
    return data."""
    post_filter(scraped.extender)
    with urllib.request.urlopen(f"{scraped.extender}/metrics", timeout=5) as response:
        exported = sample_names(response.read().decode())
    # Two scrapes at least, so that rates have their two samples.
    until(
        lambda: scraped.query(
            'count_over_time(hostport_extender_index_nodes{pod="extender-e2e"}[1m]) >= 2'
        )
    )
    for expr in dashboard_queries():
        result = scraped.query(expr.replace("$__rate_interval", "1m"))
        if used_metrics(expr) <= exported:
            assert result, expr


@pytest.fixture
async def live_api(tmp_path: Path) -> AsyncIterator[tuple[FakeApiServer, Path]]:
    """The sample cluster behind the fake API server, and a kubeconfig for it."""
    fake = FakeApiServer(token="t", pki=Pki.create(tmp_path / "pki"))
    objects = load_objects([SAMPLE])
    for raw in objects.nodes:
        fake.put("nodes", raw)
    for raw in objects.pods:
        fake.put("pods", raw)
    await fake.start()
    try:
        yield fake, fake.write_kubeconfig(tmp_path / "kubeconfig", token="t")
    finally:
        await fake.stop()


async def child(*argv: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "extender", *argv,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def stopped(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), 30)


async def test_dashboard_and_alerts_use_only_metrics_real_servers_export(
    live_api: tuple[FakeApiServer, Path], tmp_path: Path
) -> None:
    """Every hostport_extender_* name in the dashboard and the rules is a sample that a live
    `serve` (after a watch restart), `serve --snapshot` or the `webhook` exported when scraped;
    every recorded name a query reads is one a rule records."""
    fake, kubeconfig = live_api
    (tmp_path / "webhook-pki").mkdir()
    pki = make_pki(tmp_path / "webhook-pki")
    exported: set[str] = set()
    live = await child("serve", "--kubeconfig", str(kubeconfig), "--listen", "127.0.0.1:0")
    snapshot = await child("serve", "--snapshot", str(SAMPLE), "--listen", "127.0.0.1:0")
    webhook = await child(
        "webhook", "--listen", "127.0.0.1:0", "--log-format", "json",
        "--kubeconfig", str(kubeconfig),
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
    )  # fmt: skip
    try:
        assert live.stdout is not None
        assert snapshot.stdout is not None
        assert webhook.stderr is not None
        live_url = re.search(r"on (http://\S+)", (await live.stdout.readline()).decode())
        snapshot_url = re.search(r"on (http://\S+)", (await snapshot.stdout.readline()).decode())
        record = json.loads(await webhook.stderr.readline())
        while not record["msg"].startswith("webhook listening on "):  # the Lease's verdict first
            record = json.loads(await webhook.stderr.readline())
        webhook_url = record["msg"].removeprefix("webhook listening on ").removesuffix("/mutate")
        assert live_url is not None
        assert snapshot_url is not None
        tls = pki.client_context()
        async with aiohttp.ClientSession() as session:

            async def scrape(base: str, **options: Any) -> str:
                async with session.get(base + "/metrics", **options) as response:
                    assert response.status == 200
                    return await response.text()

            async def post(url: str, body: bytes, **options: Any) -> None:
                async with session.post(url, data=body, **options) as response:
                    assert response.status == 200

            async def live_restarted() -> bool:
                return "hostport_extender_informer_watch_restarts_total{" in await scrape(
                    live_url[1]
                )

            await eventually(lambda: fake.open_watches >= 2)
            fake.break_streams()
            await eventually_async(live_restarted)
            await post(live_url[1] + "/filter", FILTER_REQUEST.read_bytes())
            exported |= sample_names(await scrape(live_url[1]))
            await post(snapshot_url[1] + "/filter", FILTER_REQUEST.read_bytes())
            exported |= sample_names(await scrape(snapshot_url[1]))
            body = json.dumps(review(pod(host_port=80))).encode()
            hook = {"ssl": tls, "server_hostname": SERVICE_NAME}
            await post(webhook_url + "/mutate", body, **hook)
            exported |= sample_names(await scrape(webhook_url, **hook))
    finally:
        for process in (live, snapshot, webhook):
            await stopped(process)
    rules = [r["expr"] for g in rule_groups() for r in g["rules"]]
    used = set().union(*map(used_metrics, [*dashboard_queries(), *rules]))
    assert used, "no query uses the extender's metrics"
    assert used <= exported, sorted(used - exported)
    read = set(RECORDED.findall(" ".join(dashboard_queries() + rules)))
    assert read <= set(recorded_names())


async def eventually_async(condition: Callable[[], Awaitable[bool]]) -> None:
    """Await `condition()` until it is true; the 20 s bound is a hang guard."""
    for _ in range(200):
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached within 20 s")
