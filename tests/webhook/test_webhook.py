"""The routing webhook: decisions per pod, AdmissionReview v1 over real HTTPS, the subcommand."""

from __future__ import annotations

import argparse
import base64
import copy
import json
import signal
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from extender.server import tls
from extender.server.metrics import new_metrics
from extender.webhook import command as webhook_cli
from extender.webhook.app import (
    ALREADY_ROUTED,
    EXCLUDED_NAMESPACE,
    EXTENDER_POD,
    NO_HOST_PORTS,
    NODE_NAME_SET,
    OTHER_SCHEDULER,
    ROUTED,
    RoutingPolicy,
    create_webhook_app,
    route_decision,
)
from tests.conftest import start_command
from tests.pki import PKI, SERVICE_NAME, make_pki

POLICY = RoutingPolicy()


def pod(
    *,
    host_network: bool = False,
    host_port: int | None = None,
    init_host_port: int | None = None,
    scheduler: str | None = "default-scheduler",
    node_name: str | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A pod as the API server hands it to a mutating webhook (defaulted, no name yet)."""
    port: dict[str, Any] = {"containerPort": 8080, "protocol": "TCP"}
    if host_port is not None:
        port["hostPort"] = host_port
    spec: dict[str, Any] = {
        "containers": [{"name": "app", "image": "nginx", "ports": [port]}],
    }
    if init_host_port is not None:
        spec["initContainers"] = [
            {
                "name": "init",
                "image": "busybox",
                "ports": [{"containerPort": 1, "hostPort": init_host_port}],
            }
        ]
    if host_network:
        spec["hostNetwork"] = True
    if scheduler is not None:
        spec["schedulerName"] = scheduler
    if node_name is not None:
        spec["nodeName"] = node_name
    metadata: dict[str, Any] = {"generateName": "web-", "namespace": "apps"}
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def review(raw_pod: dict[str, Any], namespace: str = "apps", **request: Any) -> dict[str, Any]:
    """An AdmissionReview v1 CREATE request for `raw_pod`, as the API server sends it."""
    body: dict[str, Any] = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "namespace": namespace,
        "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "object": raw_pod,
        "oldObject": None,
        "dryRun": False,
    }
    body.update(request)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": body}


CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("hostNetwork pod", pod(host_network=True), "apps", ROUTED),
    ("hostPort in a container", pod(host_port=80), "apps", ROUTED),
    ("hostPort in an init container", pod(init_host_port=9100), "apps", ROUTED),
    ("no schedulerName yet", pod(host_port=80, scheduler=None), "apps", ROUTED),
    ("plain pod", pod(), "apps", NO_HOST_PORTS),
    ("hostPort 0 means none", pod(host_port=0), "apps", NO_HOST_PORTS),
    ("another scheduler", pod(host_port=80, scheduler="volcano"), "apps", OTHER_SCHEDULER),
    (
        "already ours",
        pod(host_port=80, scheduler="hostport-aware-scheduler"),
        "apps",
        ALREADY_ROUTED,
    ),
    ("nodeName set", pod(host_network=True, node_name="n1"), "apps", NODE_NAME_SET),
    (
        "the extender itself",
        pod(host_port=8888, labels={"app.kubernetes.io/name": "hostport-extender"}),
        "apps",
        EXTENDER_POD,
    ),
    ("kube-system (CNI bootstrap)", pod(host_network=True), "kube-system", EXCLUDED_NAMESPACE),
    ("the extender's namespace", pod(host_network=True), "hostport-system", EXCLUDED_NAMESPACE),
]


@pytest.mark.parametrize(
    ("raw_pod", "namespace", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_route_decision(raw_pod: dict[str, Any], namespace: str, reason: str) -> None:
    """Pods using host ports are routed; every reason to leave a pod alone wins over routing."""
    decision = route_decision(raw_pod, namespace, POLICY)
    assert decision.reason == reason
    if reason == ROUTED:
        assert decision.patch == (
            {"op": "add", "path": "/spec/schedulerName", "value": "hostport-aware-scheduler"},
        )
    else:
        assert decision.patch == ()


def apply_patch(raw_pod: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply the only kind of operation the webhook emits (add of an object member)."""
    result = copy.deepcopy(raw_pod)
    for operation in patch:
        assert operation["op"] == "add"
        *parents, leaf = operation["path"].strip("/").split("/")
        target = result
        for part in parents:
            target = target[part]
        target[leaf] = operation["value"]
    return result


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def webhook_url(pki: PKI) -> AsyncIterator[str]:
    app = create_webhook_app(POLICY, new_metrics())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = tls.server_context(tls.TLSFiles(pki.server_cert, pki.server_key))
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def post(url: str, pki: PKI, body: bytes) -> tuple[int, Any]:
    """POST like the API server does: HTTPS, verifying the certificate against the caBundle."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + "/mutate",
            data=body,
            headers={"Content-Type": "application/json"},
            ssl=pki.client_context(),
            server_hostname=SERVICE_NAME,
        ) as response,
    ):
        return response.status, json.loads(await response.read())


@pytest.mark.parametrize(
    ("raw_pod", "namespace", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_review_over_https(
    pki: PKI, webhook_url: str, raw_pod: dict[str, Any], namespace: str, reason: str
) -> None:
    """Each case answered over HTTPS: allowed, same uid, a JSON patch only when routed."""
    request = review(raw_pod, namespace)
    status, answer = await post(webhook_url, pki, json.dumps(request).encode())
    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == request["request"]["uid"]
    assert response["allowed"] is True
    if reason == ROUTED:
        assert response["patchType"] == "JSONPatch"
        patched = apply_patch(raw_pod, json.loads(base64.b64decode(response["patch"])))
        assert patched["spec"]["schedulerName"] == "hostport-aware-scheduler"
        assert {k: v for k, v in patched["spec"].items() if k != "schedulerName"} == {
            k: v for k, v in raw_pod["spec"].items() if k != "schedulerName"
        }
    else:
        assert "patch" not in response
        assert "patchType" not in response


@pytest.mark.parametrize(
    "request_fields",
    [
        {"operation": "UPDATE"},
        {"resource": {"group": "apps", "version": "v1", "resource": "deployments"}},
        {"subResource": "binding"},
    ],
    ids=["update", "not-pods", "subresource"],
)
async def test_non_pod_creates_are_allowed_untouched(
    pki: PKI, webhook_url: str, request_fields: dict[str, Any]
) -> None:
    """A misconfigured rule that sends other operations or resources gets an allow, no patch."""
    request = review(pod(host_network=True), **request_fields)
    status, answer = await post(webhook_url, pki, json.dumps(request).encode())
    assert status == 200
    assert answer["response"] == {"uid": request["request"]["uid"], "allowed": True}


MALFORMED: list[tuple[str, bytes, str]] = [
    ("not json", b"{not json", "body is not JSON"),
    ("a list", b"[]", "body is not a JSON object"),
    (
        "v1beta1",
        json.dumps({**review(pod()), "apiVersion": "admission.k8s.io/v1beta1"}).encode(),
        "is not admission.k8s.io/v1",
    ),
    ("wrong kind", json.dumps({**review(pod()), "kind": "Pod"}).encode(), "is not AdmissionReview"),
    (
        "no request",
        json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
        "has no request",
    ),
    ("no uid", json.dumps(review(pod(), uid="")).encode(), "has no uid"),
    ("object not a pod", json.dumps(review(pod(), object="oops")).encode(), "object is not a Pod"),
]


@pytest.mark.parametrize(
    ("body", "message"), [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED]
)
async def test_malformed_reviews_get_a_clear_400(
    pki: PKI, webhook_url: str, body: bytes, message: str
) -> None:
    """Malformed reviews get HTTP 400 with a one-line JSON error, never a traceback."""
    status, answer = await post(webhook_url, pki, body)
    assert status == 400
    assert message in answer["error"]
    assert "Traceback" not in answer["error"]
    assert "\n" not in answer["error"]


async def test_decisions_are_counted_in_metrics(pki: PKI, webhook_url: str) -> None:
    """Every answered review increments hostport_extender_admission_reviews_total{decision}."""
    for raw_pod in (pod(host_network=True), pod(host_port=81), pod()):
        await post(webhook_url, pki, json.dumps(review(raw_pod)).encode())
    async with (
        aiohttp.ClientSession() as session,
        session.get(webhook_url + "/metrics", ssl=pki.client_context()) as response,
    ):
        text = await response.text()
    assert 'hostport_extender_admission_reviews_total{decision="routed"} 2.0' in text
    assert 'hostport_extender_admission_reviews_total{decision="no-host-ports"} 1.0' in text
    assert 'hostport_extender_request_duration_seconds_count{code="200",verb="mutate"} 3.0' in text


def run_webhook(*argv: str) -> subprocess.Popen[str]:
    """Start the `webhook` subcommand in a child process, as the container entrypoint would."""
    return start_command("webhook", *argv)


async def test_subcommand_serves_https_and_stops_on_sigterm(pki: PKI) -> None:
    """`webhook --tls-cert --tls-key --listen 127.0.0.1:0` serves /mutate and exits 0 on SIGTERM."""
    process = run_webhook(
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--log-format",
        "json",
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        record = json.loads(line)
        assert record["msg"].startswith("webhook listening on https://127.0.0.1:")
        url = record["msg"].removeprefix("webhook listening on ").removesuffix("/mutate")
        status, answer = await post(url, pki, json.dumps(review(pod(host_port=80))).encode())
        assert status == 200
        assert answer["response"]["patchType"] == "JSONPatch"
        decision = json.loads(process.stderr.readline())
        assert decision["decision"] == "routed"
        assert decision["namespace"] == "apps"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "nonsense"], "want HOST:PORT"),
        (["--self-label", "novalue"], "want KEY=VALUE"),
        (["--tls-cert", "/nonexistent/tls.crt"], "no such file"),
    ],
)
def test_subcommand_bad_input_is_one_line(pki: PKI, argv: list[str], message: str) -> None:
    """Bad flags or files end with status 2 and one line naming the problem, no traceback."""
    base = [
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
    ]
    process = run_webhook(*base, *argv)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    assert message in stderr
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_exclude_namespace_flag_replaces_the_default_list() -> None:
    """--exclude-namespace replaces the default list; pods there are left alone."""
    parser = argparse.ArgumentParser()
    webhook_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["webhook", "--tls-cert", "c", "--tls-key", "k", "--exclude-namespace", "ingress"]
    )
    policy = webhook_cli.policy_from_args(args)
    assert route_decision(pod(host_port=80), "ingress", policy).reason == EXCLUDED_NAMESPACE
    assert route_decision(pod(host_port=80), "kube-system", policy).reason == ROUTED
