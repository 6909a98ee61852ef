"""config/monitoring proven with the real tools: promtool checks and unit-tests the rules, a real
Prometheus scrapes a running extender and a running webhook and evaluates them, and the Grafana
dashboard queries only metrics that running servers really export.

promtool and prometheus come from Debian's `prometheus` package (`scripts/system-deps`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import REPO, start_command
from tests.fakeapi import FakeApiServer, Pki, eventually
from tests.pki import SERVICE_NAME, make_pki
from tests.truth import sample_api_server
from tests.webhook.test_guard import SCHEDULER, delete_review, victim
from tests.webhook.test_webhook import pod, review

MONITORING = REPO / "config" / "monitoring"
UNIT_TESTS = Path(__file__).parent / "promtool" / "rules-test.yaml"
RULES_NAME = "hostport-extender-rules.yaml"
SAMPLE = REPO / "config" / "samples" / "cluster.yaml"
FILTER_REQUEST = REPO / "config" / "samples" / "filter-pod-identity-agent.json"
NEVER = "vector(1) < 0"
ALWAYS = "vector(1)"
LEASE = ("hostport-system", "hostport-aware-scheduler")
ROUTING_GROUP = "hostport-extender-routing"


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
    """A running Prometheus, the `serve --snapshot` and the `webhook` it scrapes."""

    prometheus: str
    extender: str
    webhook: str
    tls: ssl.SSLContext
    """Trusts the webhook's CA (and checks the name it serves)."""

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = get_json(
            f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        )
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def post_webhook(self, path: str, raw_review: dict[str, Any]) -> dict[str, Any]:
        """POST one AdmissionReview to the webhook over HTTPS; its answer."""
        request = urllib.request.Request(
            self.webhook + path,
            data=json.dumps(raw_review).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5, context=self.tls) as response:
            assert response.status == 200
            answered: dict[str, Any] = json.loads(response.read())["response"]
            return answered


@contextlib.contextmanager
def api_server_in_a_thread(directory: Path) -> Iterator[FakeApiServer]:
    """The fake API server on its own event loop in a thread, for the synchronous fixture."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-api", daemon=True)
    thread.start()
    fake = FakeApiServer(token="t", pki=Pki.create(directory / "api-pki"))
    try:
        asyncio.run_coroutine_threadsafe(fake.start(), loop).result(30)
        try:
            yield fake
        finally:
            asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def start_webhook(
    directory: Path, kubeconfig: Path, pki_dir: Path
) -> tuple[subprocess.Popen[str], str]:
    """`webhook` on 127.0.0.1:0 (its log in a file, so no pipe can fill); it and its base URL."""
    pki = make_pki(pki_dir)
    log_path = directory / "webhook.log"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "extender", "webhook", "--listen", "127.0.0.1:0",
            "--kubeconfig", str(kubeconfig),
            "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        ],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=log_path.open("w"), text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip

    def listening() -> str | None:
        assert process.poll() is None, log_path.read_text()
        found = re.search(r"webhook listening on (https://\S+)/mutate", log_path.read_text())
        return found[1] if found else None

    return process, until(listening)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    """`serve --snapshot` on the sample over HTTP and a `webhook` over HTTPS (whose scheduler
    Lease, on the fake API server, was last renewed 10 minutes ago), both scraped every second
    by a real Prometheus (its own temp dir, 127.0.0.1 only) that evaluates the shipped rules
    every second."""
    directory = tmp_path_factory.mktemp("prometheus")
    extender = start_command("serve", "--snapshot", str(SAMPLE), "--listen", "127.0.0.1:0")
    prometheus: subprocess.Popen[str] | None = None
    webhook: subprocess.Popen[str] | None = None
    try:
        assert extender.stdout is not None
        found = re.search(r"on http://(127\.0\.0\.1:\d+)", extender.stdout.readline())
        assert found is not None
        with api_server_in_a_thread(directory) as fake:
            fake.put_lease(
                *LEASE,
                holder="hostport-aware-scheduler-7c9f_0b1e",
                renewed=datetime.now(UTC) - timedelta(minutes=10),
            )
            kubeconfig = fake.write_kubeconfig(directory / "kubeconfig", token="t")
            webhook, webhook_url = start_webhook(directory, kubeconfig, directory)
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
                    },
                    # As the PodMonitor's webhook endpoint: HTTPS, checked against the CA.
                    {
                        "job_name": "hostport-extender-webhook",
                        "scheme": "https",
                        "tls_config": {
                            "ca_file": str(directory / "ca.crt"),
                            "server_name": SERVICE_NAME,
                        },
                        "static_configs": [
                            {
                                "targets": [webhook_url.removeprefix("https://")],
                                "labels": {"namespace": "hostport-system", "pod": "webhook-e2e"},
                            }
                        ],
                    },
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
            tls = ssl.create_default_context(cafile=str(directory / "ca.crt"))
            yield Scraped(url, f"http://{found[1]}", webhook_url, tls)
    finally:
        if prometheus is not None:
            stop(prometheus)
        if webhook is not None:
            stop(webhook)
        stop(extender)


HOST_PORT_POD = review(pod(host_port=80))
PROTECTED_DELETE = delete_review(victim(host_port=80, protected="true"), SCHEDULER)


@pytest.fixture(scope="module")
def webhook_traffic(scraped: Scraped) -> Scraped:
    """A host-port pod admitted unrouted (the Lease is stale) and a scheduler's DELETE of a
    protected pod refused, each before and after Prometheus first scraped its counter, so that
    both counters have a rate."""

    def send() -> None:
        admitted = scraped.post_webhook("/mutate", HOST_PORT_POD)
        assert admitted["allowed"] is True
        patch = json.loads(base64.b64decode(admitted["patch"]))
        assert [op["path"] for op in patch] == ["/metadata/annotations"]  # no schedulerName
        assert patch[0]["value"] == {"hostports.dev/unrouted": "scheduler-lease-stale"}
        refused = scraped.post_webhook("/validate", PROTECTED_DELETE)
        assert refused["allowed"] is False

    send()
    until(
        lambda: (
            scraped.query('hostport_extender_guard_decisions_total{pod="webhook-e2e"}')
            and scraped.query('hostport_extender_admission_reviews_total{pod="webhook-e2e"}')
        ),
        timeout=30,
    )
    send()
    until(
        lambda: (
            scraped.query(
                'rate(hostport_extender_guard_decisions_total{pod="webhook-e2e"}[1m]) > 0'
            )
            and scraped.query(
                'rate(hostport_extender_admission_reviews_total{pod="webhook-e2e"}[1m]) > 0'
            )
        )
    )
    return scraped


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


def test_prometheus_scrapes_the_extender_and_records_its_rates(webhook_traffic: Scraped) -> None:
    """With filter calls arriving, the recording rules yield the extender's request rate and its
    rejections by claim kind, labelled with the scrape's namespace and pod; every rule evaluates
    without error, and the alerts pending are the sample's real port conflict and the webhook's
    three: its scheduler Lease is stale, a host-port pod went unrouted, the guard refused."""
    scraped = webhook_traffic

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
    (age,) = scraped.query("hostport_extender_webhook_scheduler_lease_age_seconds")
    assert float(age["value"][1]) >= 600

    # The sample has a real conflict on ip-10-0-1-15 (see the README's audit); the webhook's
    # alerts are for its Lease (renewed 10 minutes ago), its unrouted admission and its refusal.
    # All are pending: their `for` is minutes.
    def pending() -> list[tuple[str, str, str]]:
        alerts = get_json(f"{scraped.prometheus}/api/v1/alerts")["data"]["alerts"]
        found = [
            (
                a["labels"]["alertname"],
                a["labels"].get("node", a["labels"].get("pod", "")),
                a["state"],
            )
            for a in alerts
        ]
        return sorted(found) if len(found) == 4 else []

    assert until(pending) == [
        ("HostportNodePortConflict", "ip-10-0-1-15.ec2.internal", "pending"),
        ("HostportPodsAdmittedUnrouted", "", "pending"),
        ("HostportPreemptionGuardRefusing", "", "pending"),
        ("HostportSchedulerNotAlive", "webhook-e2e", "pending"),
    ]
    (unrouted,) = [
        a
        for a in get_json(f"{scraped.prometheus}/api/v1/alerts")["data"]["alerts"]
        if a["labels"]["alertname"] == "HostportPodsAdmittedUnrouted"
    ]
    assert unrouted["labels"]["decision"] == "scheduler-lease-stale"


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


def test_every_dashboard_query_runs_in_prometheus(webhook_traffic: Scraped) -> None:
    """Prometheus accepts every panel's query; those on metrics the snapshot extender or the
    webhook export return data."""
    scraped = webhook_traffic
    post_filter(scraped.extender)
    with urllib.request.urlopen(f"{scraped.extender}/metrics", timeout=5) as response:
        exported = sample_names(response.read().decode())
    with urllib.request.urlopen(
        f"{scraped.webhook}/metrics", timeout=5, context=scraped.tls
    ) as response:
        exported |= sample_names(response.read().decode())
    assert "hostport_extender_webhook_scheduler_lease_age_seconds" in exported
    # Two scrapes at least since the first filter call created its series, so that rates have
    # their two samples (the webhook's counters have theirs: webhook_traffic).
    until(
        lambda: scraped.query(
            "count_over_time(hostport_extender_request_duration_seconds_count"
            '{pod="extender-e2e", verb="filter"}[1m]) >= 2'
        )
    )
    for expr in dashboard_queries():
        result = scraped.query(expr.replace("$__rate_interval", "1m"))
        if used_metrics(expr) <= exported:
            assert result, expr


@pytest.fixture
async def live_api(tmp_path: Path) -> AsyncIterator[tuple[FakeApiServer, Path]]:
    """The sample cluster behind the fake API server, and a kubeconfig for it."""
    fake = sample_api_server(tmp_path / "pki", token="t")
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
    `serve` (after a watch restart), `serve --snapshot` or the `webhook` (after a routed
    admission and a refused DELETE) exported when scraped; every recorded name a query reads is
    one a rule records."""
    fake, kubeconfig = live_api
    # A Lease renewed now: the webhook routes, and exports the Lease's age.
    fake.put_lease(*LEASE, holder="hostport-aware-scheduler-7c9f_0b1e", renewed=datetime.now(UTC))
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
            await post(webhook_url + "/validate", json.dumps(PROTECTED_DELETE).encode(), **hook)
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


def shape(groups: list[dict[str, Any]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Groups as (name, [(rule name, expression with its whitespace collapsed)])."""
    return [
        (
            g["name"],
            [(r.get("alert", r.get("record")), " ".join(r["expr"].split())) for r in g["rules"]],
        )
        for g in groups
    ]


def test_the_kubeadm_component_drops_only_the_routing_alerts(tmp_path: Path) -> None:
    """config/monitoring with the kubeadm component (whose webhook never routes) renders without
    the routing group, whose alerts read the routing metrics, and keeps every other rule; promtool
    accepts what is left."""
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl is needed to render the kustomize trees"
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    monitoring = os.path.relpath(MONITORING, overlay)  # kustomize refuses absolute roots
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n- {monitoring}\ncomponents:\n- {monitoring}/kubeadm\n"
    )
    result = subprocess.run(
        [kubectl, "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (rule,) = [o for o in yaml.safe_load_all(result.stdout) if o and o["kind"] == "PrometheusRule"]
    groups = rule["spec"]["groups"]
    (routing,) = [g for g in rule_groups() if g["name"] == ROUTING_GROUP]
    dropped = {r["alert"] for r in routing["rules"]}
    assert dropped == {"HostportSchedulerNotAlive", "HostportPodsAdmittedUnrouted"}
    assert shape([g for g in rule_groups() if g["name"] != ROUTING_GROUP]) == shape(groups)
    assert all(
        "webhook_scheduler_alive" in r["expr"] or "admission_reviews" in r["expr"]
        for r in routing["rules"]
    )
    assert "HostportPreemptionGuardRefusing" in {r.get("alert") for g in groups for r in g["rules"]}
    write_rules(tmp_path, groups)
    checked = promtool("check", "rules", RULES_NAME, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
