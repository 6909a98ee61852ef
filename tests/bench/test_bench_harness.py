"""The benchmark's baseline server, process handling and driver, over real loopback sockets."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from bench import bodies, driver, report, servers
from bench.generate import DAEMONSETS, ClusterSpec, generate_node, node_name
from bench.null_extender import create_app, parse_listen

AiohttpClient = Any  # pytest-aiohttp's fixture factory has no public type


@pytest.fixture(scope="module")
def templates() -> bodies.Templates:
    return bodies.load_templates()


async def _post(client: TestClient[Any, Any], path: str, body: bytes) -> Any:
    response = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    assert response.status == 200
    return orjson.loads(await response.read())


async def test_null_filter_passes_every_node_name(
    aiohttp_client: AiohttpClient, templates: bodies.Templates
) -> None:
    """NodeNames come back unchanged, with empty failure maps and no error."""
    client = await aiohttp_client(create_app())
    names = [node_name(i) for i in range(300)]
    answer = await _post(client, "/filter", bodies.names_body(templates.names_hostport, names))
    assert answer == {
        "FailedNodes": {},
        "FailedAndUnresolvableNodes": {},
        "Error": "",
        "NodeNames": names,
    }


async def test_null_filter_echoes_full_nodes(
    aiohttp_client: AiohttpClient, templates: bodies.Templates
) -> None:
    """With nodeCacheCapable false, the full NodeList is echoed back."""
    client = await aiohttp_client(create_app())
    raw_nodes = [generate_node(ClusterSpec(5, 0), i) for i in range(5)]
    body = bodies.nodes_body(templates.nodes_hostport, raw_nodes, templates.node_managed_fields)
    answer = await _post(client, "/filter", body)
    assert answer["Nodes"] == orjson.loads(body)["Nodes"]
    assert answer["Error"] == ""


async def test_null_prioritize_scores_zero_and_bind_succeeds(
    aiohttp_client: AiohttpClient, templates: bodies.Templates
) -> None:
    """Prioritize gives every node 0 and bind reports success, in the scheduler's key casing."""
    client = await aiohttp_client(create_app())
    names = ["a", "b"]
    scores = await _post(client, "/prioritize", bodies.names_body(templates.names_plain, names))
    assert scores == [{"Host": "a", "Score": 0}, {"Host": "b", "Score": 0}]
    bind = bodies.bind_body(templates.bind, "p", "ns", "uid-1", "a")
    assert await _post(client, "/bind", bind) == {"Error": ""}


async def test_null_preempt_answers_with_meta_victims(aiohttp_client: AiohttpClient) -> None:
    """Full victim pods are answered as UIDs, as the scheduler requires."""
    client = await aiohttp_client(create_app())
    victims = {"n1": {"Pods": [{"metadata": {"uid": "u1"}}], "NumPDBViolations": 1}}
    body = orjson.dumps({"Pod": {}, "NodeNameToVictims": victims, "NodeNameToMetaVictims": None})
    answer = await _post(client, "/preempt", body)
    assert answer == {
        "NodeNameToMetaVictims": {"n1": {"Pods": [{"UID": "u1"}], "NumPDBViolations": 1}}
    }


async def test_null_rejects_a_body_that_is_not_json(aiohttp_client: AiohttpClient) -> None:
    """Garbage gets a 400 that says why, not a traceback."""
    client = await aiohttp_client(create_app())
    response = await client.post("/filter", data=b"{nope")
    assert response.status == 400
    assert "not JSON" in await response.text()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:8899", ("::1", 8899))],
)
def test_listen_addresses_parse(text: str, expected: tuple[str, int]) -> None:
    """HOST:PORT and [IPv6]:PORT are understood."""
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8899", "127.0.0.1:", "127.0.0.1:http", "h:70000"])
def test_bad_listen_addresses_are_refused(text: str) -> None:
    """Anything but HOST:PORT is a clear error."""
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(text)


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([3.0, 1.0, 2.0], 50, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 90, 4.0),
        (list(map(float, range(1, 101))), 99, 99.0),
        ([5.0], 99, 5.0),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], p: float, expected: float) -> None:
    """Percentiles are real observed latencies (nearest rank), never interpolated."""
    assert driver.percentile(values, p) == expected


def test_percentile_of_nothing_is_an_error() -> None:
    """No samples means no figure, not zero."""
    with pytest.raises(ValueError, match="no values"):
        driver.percentile([], 50)


@pytest.fixture(scope="module")
def null_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Server]:
    logs = tmp_path_factory.mktemp("logs")
    with servers.running("null", servers.null_command(), logs) as server:
        yield server


def test_null_extender_runs_as_a_process(null_server: servers.Server) -> None:
    """The baseline starts as its own process, reports its port and answers /healthz."""
    assert null_server.process.poll() is None
    assert null_server.port > 0
    assert "listening on http://127.0.0.1:" in null_server.log.read_text()
    resident, peak = servers.memory_mb(null_server)
    assert 5 < resident <= peak < 500


def test_serial_and_concurrent_measurements_count_every_call(
    null_server: servers.Server, templates: bodies.Templates
) -> None:
    """The driver times every call it makes, serially and with several connections."""
    call = driver.Call("/filter", bodies.names_body(templates.names_plain, ["a", "b", "c"]))
    client = driver.SerialClient(null_server)
    try:
        answer = driver.describe_answer("/filter", client.send(call))
        serial = driver.measure_serial([client], call, count=40, rounds=4, warmup=2)
    finally:
        client.close()
    assert answer == {"passed": 3, "rejected": 0, "error": ""}
    assert len(serial["null"].latencies_s) == 40
    assert serial["null"].errors == 0
    assert serial["null"].calls_per_s > 0
    concurrent = driver.measure_concurrent([null_server], call, count=40, concurrency=4, rounds=2)
    assert len(concurrent["null"].latencies_s) == 40
    assert concurrent["null"].errors == 0


def test_a_non_200_answer_is_a_call_error(null_server: servers.Server) -> None:
    """A server that answers 4xx/5xx fails the call with the status and body."""
    client = driver.SerialClient(null_server)
    try:
        with pytest.raises(driver.CallError, match="HTTP 400"):
            client.send(driver.Call("/filter", b"[1"))
    finally:
        client.close()


def test_a_server_that_dies_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    """If the server under test exits before it is healthy, the error shows its last output."""
    command = [sys.executable, "-c", "import sys; print('cannot load snapshot'); sys.exit(3)"]
    with pytest.raises(servers.ServerError, match="status 3") as failed:
        servers.start("broken", command, tmp_path)
    assert "cannot load snapshot" in str(failed.value)


SLOW_TO_STOP = """
import pathlib, signal, sys, time
def finish(*_):
    time.sleep(1.0)  # a profiled server rendering its profile
    pathlib.Path(sys.argv[1]).write_text("written")
    sys.exit(0)
signal.signal(signal.SIGTERM, finish)
print("up", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize(("grace_s", "written"), [(10.0, True), (0.2, False)])
def test_a_server_gets_its_grace_to_finish_after_sigterm(
    tmp_path: Path, grace_s: float, written: bool
) -> None:
    """Within the grace a server ends its own way (a profile gets written); past it, killed."""
    out = tmp_path / "profile.txt"
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_TO_STOP, str(out)], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"up\n"
    servers.stop_process(process, grace_s)
    assert out.exists() is written
    assert process.returncode == (0 if written else -9)
    process.stdout.close()


def _http_line(server: str, scenario: str, nodes: int, p50: float, p99: float) -> report.Line:
    return {
        "kind": "http",
        "server": server,
        "scenario": scenario,
        "nodes": nodes,
        "concurrency": 1,
        "p50_ms": p50,
        "p90_ms": p99,
        "p99_ms": p99,
        "calls_per_s": 1000 / p50,
        "errors": 0,
        "answer": {},
    }


def test_targets_are_judged_on_ratios_to_the_baseline() -> None:
    """The report checks the issue's targets against the null extender from the same run."""
    lines = [
        _http_line("ours", "filter-names-hostport", 5000, 1.2, 1.9),
        _http_line("null", "filter-names-hostport", 5000, 1.0, 1.5),
        _http_line("ours", "filter-names-plain", 5000, 1.2, 1.5),
        _http_line("null", "filter-names-plain", 5000, 1.0, 1.5),
    ]
    found = {t.name: t for t in report.targets(lines)}
    assert found["filter, 5,000 NodeNames, host-port pod: p99"].met
    assert found["filter, 5,000 NodeNames, host-port pod: p50 / null p50"].measured == 1.2
    assert found["filter, 5,000 NodeNames, host-port pod: p50 / null p50"].met
    assert not found["filter, 5,000 NodeNames, pod without host ports: p50 / null p50"].met
    events = report.Target("watch events applied", 40_000, 50_000, "events/s", at_least=True)
    assert not events.met


def test_ingest_runs_in_its_own_process_and_reports_one_json_line() -> None:
    """`python -m bench.ingest` loads the cluster, applies the events and reports the figures."""
    command = [sys.executable, "-m", "bench.ingest", "--nodes=20", "--pods-per-node=30"]
    done = subprocess.run(
        [*command, "--events=2000"], capture_output=True, cwd=servers.REPO, check=True
    )
    line = orjson.loads(done.stdout)
    assert (line["nodes"], line["pods"], line["events"]) == (20, 600, 2000)
    assert 20 * len(DAEMONSETS[2:]) <= line["pods_with_host_ports"] < 600
    assert line["index_s"] > 0
    assert line["decode_s"] > 0
    assert line["events_per_s"] > 0
    assert line["rss_before_mb"] < line["rss_after_mb"] <= line["peak_rss_mb"]


def test_bodies_keep_the_captured_shape(templates: bodies.Templates) -> None:
    """Each benchmark body has the capture's keys and Pod; only the node list is scaled up."""
    from bench.run import QUICK, scenarios  # noqa: PLC0415 (run imports every bench module)

    spec = ClusterSpec(nodes=300, pods_per_node=0)
    plan = dataclasses.replace(QUICK, sizes=(10, 300))
    found = {(s.name, s.nodes): s for s in scenarios(plan, spec, templates)}
    names_body = orjson.loads(found["filter-names-hostport", 300].call.body)
    assert list(names_body) == list(templates.names_hostport)
    assert names_body["Pod"] == templates.names_hostport["Pod"]
    assert names_body["Nodes"] is None
    assert len(set(names_body["NodeNames"])) == 300
    nodes_body = orjson.loads(found["filter-nodes-hostport", 1000].call.body)
    assert nodes_body["NodeNames"] is None
    assert len(nodes_body["Nodes"]["items"]) == 300  # a 300-node cluster caps the list
    captured_item = templates.nodes_hostport["Nodes"]["items"][0]
    assert set(nodes_body["Nodes"]["items"][0]) == set(captured_item)
    assert set(nodes_body["Nodes"]["items"][0]["metadata"]) >= set(captured_item["metadata"])
    bind = orjson.loads(found["bind", 1].call.body)
    assert list(bind) == list(templates.bind)


def test_markdown_report_puts_ours_beside_the_baseline() -> None:
    """The README table shows both servers, the ratios, what ours answered and the targets."""
    ours = _http_line("ours", "filter-names-hostport", 5000, 1.5, 3.0)
    ours["answer"] = {"passed": 4513, "rejected": 487, "error": ""}
    lines = [ours, _http_line("null", "filter-names-hostport", 5000, 0.5, 1.0)]
    context = {
        "mode": "quick",
        "time": "now",
        "commit": "abc",
        "cpus": 2,
        "python": "3.11",
        "load_before": "1.00",
        "serve_nodes": 5000,
        "serve_pods": 50000,
        "snapshot_mb": 230.0,
        "startup_ours_s": 10.0,
        "startup_null_s": 0.3,
        "rss_ours_mb": 1200.0,
        "peak_rss_ours_mb": 1900.0,
        "peak_rss_null_mb": 150.0,
    }
    text = report.markdown(lines, "make bench-quick", context)
    row = next(line for line in text.splitlines() if line.startswith("| filter-names-hostport"))
    assert "| 1.50 / 3.00 / 3.00 |" in row
    assert "| 0.50 / 1.00 / 1.00 |" in row
    assert "| 3.00 | 3.00 |" in row
    assert "passed 4513, rejected 487" in row
    assert (
        "| filter, 5,000 NodeNames, host-port pod: p99 | 3.00 ms (target <= 2 ms) | **no** |"
        in text
    )
    assert text.startswith("Command: `make bench-quick`")
