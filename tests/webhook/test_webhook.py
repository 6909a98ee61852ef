"""The routing webhook: decisions per pod, the scheduler Lease, AdmissionReview v1 over real
HTTPS (the Lease served by the fake API server), the subcommand."""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from extender.core.routing import (
    ALIVE,
    ALREADY_ROUTED,
    BOOTSTRAP_POD,
    EXCLUDED_NAMESPACE,
    EXTENDER_POD,
    LEASE_MISSING,
    LEASE_STALE,
    LEASE_UNREADABLE,
    NO_HOST_PORTS,
    NODE_NAME_SET,
    NOT_ALIVE,
    OTHER_SCHEDULER,
    ROUTED,
    UNROUTED_ANNOTATION,
    RoutingPolicy,
    route_decision,
)
from extender.kube.kubeapi import KubeApi
from extender.kube.kubeauth import load_connection
from extender.server import tls
from extender.server.metrics import new_metrics
from extender.webhook import command as webhook_cli
from extender.webhook.app import create_webhook_app
from extender.webhook.guard import GuardPolicy
from extender.webhook.lease import LeaseWatch
from tests.conftest import start_command
from tests.fakeapi import FakeApiServer, eventually
from tests.pki import PKI, SERVICE_NAME
from tests.webhook.conftest import LEASE_NAME, LEASE_NS

POLICY = RoutingPolicy()
ROUTED_HERE = "hostport-aware-scheduler|None"


def pod(
    *,
    host_network: bool = False,
    host_port: int | None = None,
    init_host_port: int | None = None,
    scheduler: str | None = "default-scheduler",
    node_name: str | None = None,
    labels: dict[str, str] | None = None,
    daemonset: str | None = None,
    namespace: str = "apps",
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
    metadata: dict[str, Any] = {"generateName": "web-", "namespace": namespace}
    if labels:
        metadata["labels"] = labels
    if daemonset is not None:
        metadata["generateName"] = f"{daemonset}-"
        metadata["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "name": daemonset,
                "uid": "e7a1c9b2-0000-4000-8000-000000000001",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
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


def system_pod(**fields: Any) -> dict[str, Any]:
    """A kube-system hostNetwork pod, as a DaemonSet controller creates it."""
    return pod(host_network=True, namespace="kube-system", **fields)


def annotated(raw_pod: dict[str, Any], annotations: dict[str, str]) -> dict[str, Any]:
    """`raw_pod` with these annotations."""
    raw_pod["metadata"]["annotations"] = annotations
    return raw_pod


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
    ("the extender's namespace", pod(host_network=True), "hostport-system", EXCLUDED_NAMESPACE),
    # The incident: an EKS add-on in kube-system is routed like any other host-port pod.
    (
        "kube-system: eks-pod-identity-agent",
        system_pod(daemonset="eks-pod-identity-agent"),
        "kube-system",
        ROUTED,
    ),
    ("kube-system: a bare hostNetwork pod", system_pod(), "kube-system", ROUTED),
    (
        "a pod with annotations already",
        annotated(system_pod(), {"hostports.dev/listen": "80/TCP@169.254.170.23"}),
        "kube-system",
        ROUTED,
    ),
    # Bootstrap components: by owning DaemonSet (any namespace) and by label.
    ("EKS VPC CNI (aws-node)", system_pod(daemonset="aws-node"), "kube-system", BOOTSTRAP_POD),
    ("kube-proxy DaemonSet", system_pod(daemonset="kube-proxy"), "kube-system", BOOTSTRAP_POD),
    ("calico-node", system_pod(daemonset="calico-node"), "calico-system", BOOTSTRAP_POD),
    ("cilium", system_pod(daemonset="cilium"), "kube-system", BOOTSTRAP_POD),
    ("GKE anetd", system_pod(daemonset="anetd"), "kube-system", BOOTSTRAP_POD),
    ("AKS azure-cns", system_pod(daemonset="azure-cns"), "kube-system", BOOTSTRAP_POD),
    ("kubeadm flannel", system_pod(daemonset="kube-flannel-ds"), "kube-flannel", BOOTSTRAP_POD),
    (
        "label k8s-app=kube-proxy",
        system_pod(labels={"k8s-app": "kube-proxy"}),
        "kube-system",
        BOOTSTRAP_POD,
    ),
    (
        "label k8s-app=aws-node",
        system_pod(labels={"k8s-app": "aws-node"}),
        "kube-system",
        BOOTSTRAP_POD,
    ),
    ("label app=flannel", system_pod(labels={"app": "flannel"}), "kube-flannel", BOOTSTRAP_POD),
    (
        "an unrelated k8s-app label",
        system_pod(labels={"k8s-app": "ingress"}),
        "kube-system",
        ROUTED,
    ),
]

LEASE_VERDICTS = [ALIVE, LEASE_MISSING, LEASE_UNREADABLE, LEASE_STALE]


@pytest.mark.parametrize("liveness", LEASE_VERDICTS)
@pytest.mark.parametrize(
    ("raw_pod", "namespace", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_route_decision_under_each_lease_verdict(
    raw_pod: dict[str, Any], namespace: str, reason: str, liveness: str
) -> None:
    """A pod that would be routed goes to the default scheduler, named why, unless alive."""
    decision = route_decision(raw_pod, namespace, POLICY, liveness)
    want = liveness if reason == ROUTED and liveness != ALIVE else reason
    assert decision.reason == want
    patched = apply_patch(raw_pod, list(decision.patch))
    routed = want == ROUTED
    assert (patched["spec"].get("schedulerName") == "hostport-aware-scheduler") == (
        routed or reason == ALREADY_ROUTED
    )
    # A pod left to the default scheduler because the scheduler is down says so.
    note = patched["metadata"].get("annotations", {}).get(UNROUTED_ANNOTATION)
    assert note == (liveness if want in NOT_ALIVE else None)


@pytest.mark.parametrize(
    ("raw_pod", "namespace", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_route_decision(raw_pod: dict[str, Any], namespace: str, reason: str) -> None:
    """Pods using host ports are routed; every reason to leave a pod alone wins over routing."""
    decision = route_decision(raw_pod, namespace, POLICY, ALIVE)
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
            target = target[part.replace("~1", "/").replace("~0", "~")]
        target[leaf.replace("~1", "/").replace("~0", "~")] = operation["value"]
    return result


def answered_pod(raw_pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """The pod as the API server stores it after this webhook response."""
    if "patch" not in response:
        return raw_pod
    assert response["patchType"] == "JSONPatch"
    return apply_patch(raw_pod, json.loads(base64.b64decode(response["patch"])))


def routed_to(raw_pod: dict[str, Any], response: dict[str, Any]) -> str | None:
    """The schedulerName the stored pod names, and the unrouted note, as `name|note`."""
    stored = answered_pod(raw_pod, response)
    note = stored["metadata"].get("annotations", {}).get(UNROUTED_ANNOTATION)
    return f"{stored['spec'].get('schedulerName')}|{note}"


def lease_watch(fake: FakeApiServer, tmp_path: Path, **kwargs: Any) -> LeaseWatch:
    """A LeaseWatch reading the fake's Lease through the project's real API client."""
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", token="token-1")
    api = KubeApi(load_connection(str(kubeconfig)), request_timeout=5)
    return LeaseWatch(api, LEASE_NS, LEASE_NAME, **kwargs)


@asynccontextmanager
async def serving(
    pki: PKI,
    lease: LeaseWatch,
    policy: RoutingPolicy = POLICY,
    guard: GuardPolicy | None = None,
    *,
    materialise_listeners: bool = False,
) -> AsyncIterator[str]:
    """The webhook app on 127.0.0.1 over HTTPS; yields its base URL."""
    app = create_webhook_app(
        policy, new_metrics(), lease, guard, materialise_listeners=materialise_listeners
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = tls.server_context(tls.TLSFiles(pki.server_cert, pki.server_key))
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def webhook_url(pki: PKI, fake: FakeApiServer, tmp_path: Path) -> AsyncIterator[str]:
    async with serving(pki, lease_watch(fake, tmp_path)) as url:
        yield url


async def post(url: str, pki: PKI, body: bytes, path: str = "/mutate") -> tuple[int, Any]:
    """POST like the API server does: HTTPS, verifying the certificate against the caBundle."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + path,
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


async def test_subcommand_serves_https_and_stops_on_sigterm(
    pki: PKI, fake: FakeApiServer, tmp_path: Path
) -> None:
    """`webhook --listen 127.0.0.1:0 ...` reads the Lease, routes, and exits 0 on SIGTERM."""
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", token="token-1")
    process = run_webhook(
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--kubeconfig",
        str(kubeconfig),
        "--log-format",
        "json",
    )
    try:
        assert process.stderr is not None
        # The fake API server runs in this event loop: read the child's output off the loop.
        lease_line = json.loads(await asyncio.to_thread(process.stderr.readline))
        assert lease_line["msg"] == (
            f"scheduler lease {LEASE_NS}/{LEASE_NAME} is fresh (holder sched-a_1f2e): routing"
        )
        record = json.loads(await asyncio.to_thread(process.stderr.readline))
        assert record["msg"].startswith("webhook listening on https://127.0.0.1:")
        url = record["msg"].removeprefix("webhook listening on ").removesuffix("/mutate")
        status, answer = await post(url, pki, json.dumps(review(pod(host_port=80))).encode())
        assert status == 200
        assert answer["response"]["patchType"] == "JSONPatch"
        decision = json.loads(await asyncio.to_thread(process.stderr.readline))
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
        (
            ["--kubeconfig", "/nonexistent/kubeconfig"],
            "kubeconfig /nonexistent/kubeconfig: no such",
        ),
        (["--scheduler-lease", "just-a-name"], "want NAMESPACE/NAME"),
        (["--bootstrap-label", "k8s-app"], "--bootstrap-label 'k8s-app': want KEY=VALUE"),
        (["--lease-poll-seconds", "0"], "--lease-poll-seconds must be above 0"),
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


def policy_from(*argv: str) -> RoutingPolicy:
    """The policy the real `webhook` parser makes of these flags."""
    parser = argparse.ArgumentParser()
    webhook_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["webhook", "--tls-cert", "c", "--tls-key", "k", *argv])
    return webhook_cli.policy_from_args(args)


def test_exclude_namespace_flag_replaces_the_default_list() -> None:
    """--exclude-namespace replaces the default list; pods there are left alone."""
    policy = policy_from("--exclude-namespace", "ingress")
    assert route_decision(pod(host_port=80), "ingress", policy).reason == EXCLUDED_NAMESPACE
    assert route_decision(pod(host_port=80), "hostport-system", policy).reason == ROUTED


def test_bootstrap_flags_replace_the_default_lists() -> None:
    """--bootstrap-daemonset and --bootstrap-label replace their defaults (settable lists)."""
    policy = policy_from("--bootstrap-daemonset", "my-cni", "--bootstrap-label", "tier=network")
    assert route_decision(system_pod(daemonset="my-cni"), "kube-system", policy).reason == (
        BOOTSTRAP_POD
    )
    assert route_decision(system_pod(labels={"tier": "network"}), "x", policy).reason == (
        BOOTSTRAP_POD
    )
    # The defaults are replaced, not extended.
    assert route_decision(system_pod(daemonset="aws-node"), "kube-system", policy).reason == ROUTED


def set_lease(fake: FakeApiServer, state: str) -> None:
    """Put the fake's scheduler Lease into one of the states the table names."""
    now = datetime.now(UTC)
    if state == "fresh":
        fake.put_lease(LEASE_NS, LEASE_NAME, holder="sched-a_1f2e", renewed=now)
    elif state == "renewed 29 s ago (duration 15)":
        fake.put_lease(LEASE_NS, LEASE_NAME, holder="a", renewed=now - timedelta(seconds=29))
    elif state == "renewed 31 s ago (duration 15)":
        fake.put_lease(LEASE_NS, LEASE_NAME, holder="a", renewed=now - timedelta(seconds=31))
    elif state == "released (no holder)":
        fake.put_lease(LEASE_NS, LEASE_NAME, holder="", renewed=now, duration=1)
    elif state == "missing":
        fake.remove_lease(LEASE_NS, LEASE_NAME)
    elif state == "forbidden":
        fake.inject_error(403, times=100, path=f"/apis/coordination.k8s.io/v1/namespaces/"
                          f"{LEASE_NS}/leases/{LEASE_NAME}")  # fmt: skip
    else:
        raise AssertionError(state)


LEASE_STATES = [
    ("fresh", ROUTED),
    ("renewed 29 s ago (duration 15)", ROUTED),
    ("renewed 31 s ago (duration 15)", LEASE_STALE),
    ("released (no holder)", LEASE_STALE),
    ("missing", LEASE_MISSING),
    ("forbidden", LEASE_UNREADABLE),
]


@pytest.mark.parametrize(("state", "reason"), LEASE_STATES, ids=[s for s, _ in LEASE_STATES])
async def test_routes_only_while_the_scheduler_lease_is_fresh(
    pki: PKI, fake: FakeApiServer, tmp_path: Path, state: str, reason: str
) -> None:
    """A kube-system host-port pod is routed only while renewTime is within 2 x duration."""
    set_lease(fake, state)
    raw_pod = system_pod(daemonset="eks-pod-identity-agent")
    async with serving(pki, lease_watch(fake, tmp_path)) as url:
        status, answer = await post(url, pki, json.dumps(review(raw_pod, "kube-system")).encode())
        metrics = await get_metrics(url, pki)
    assert status == 200
    assert answer["response"]["allowed"] is True
    want = ROUTED_HERE if reason == ROUTED else f"default-scheduler|{reason}"
    assert routed_to(raw_pod, answer["response"]) == want
    assert f'hostport_extender_admission_reviews_total{{decision="{reason}"}} 1.0' in metrics
    alive = 1.0 if reason == ROUTED else 0.0
    assert f"hostport_extender_webhook_scheduler_alive {alive}" in metrics


async def test_api_server_unreachable_means_not_routed(
    pki: PKI, fake: FakeApiServer, tmp_path: Path
) -> None:
    """With the API server down, the Lease cannot be read and nothing is routed."""
    lease = lease_watch(fake, tmp_path)
    await fake.go_down()
    async with serving(pki, lease) as url:
        _, answer = await post(url, pki, json.dumps(review(pod(host_port=80))).encode())
    assert routed_to(pod(host_port=80), answer["response"]) == (
        "default-scheduler|scheduler-lease-unreadable"
    )
    assert lease.verdict() == LEASE_UNREADABLE
    await fake.come_up()


async def test_lease_is_read_in_the_background_not_per_admission(
    pki: PKI, fake: FakeApiServer, tmp_path: Path
) -> None:
    """Admissions read the cached Lease; a scheduler that stops renewing is noticed within
    2 x leaseDuration, and routing resumes when it renews again."""
    fake.put_lease(LEASE_NS, LEASE_NAME, holder="a", renewed=datetime.now(UTC), duration=1)
    lease = lease_watch(fake, tmp_path, poll_seconds=0.2)
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases/{LEASE_NAME}"
    async with serving(pki, lease) as url:
        reads_before = sum(r.path == lease_path for r in fake.requests)
        for _ in range(20):
            _, answer = await post(url, pki, json.dumps(review(pod(host_port=80))).encode())
            assert routed_to(pod(host_port=80), answer["response"]) == ROUTED_HERE
        reads_after = sum(r.path == lease_path for r in fake.requests)
        # 20 admissions, a handful of background polls at most (they run every 0.2 s).
        assert reads_after - reads_before < 20
        # The scheduler dies: renewTime stops moving; 2 x 1 s later the webhook stops routing.
        await eventually(lambda: lease.verdict() == LEASE_STALE, within=5)
        _, answer = await post(url, pki, json.dumps(review(pod(host_port=80))).encode())
        assert routed_to(pod(host_port=80), answer["response"]) == (
            "default-scheduler|scheduler-lease-stale"
        )
        # A replica takes over and renews: routing resumes without a restart.
        fake.put_lease(LEASE_NS, LEASE_NAME, holder="b", renewed=datetime.now(UTC), duration=1)
        await eventually(lambda: lease.verdict() == ALIVE, within=5)
        _, answer = await post(url, pki, json.dumps(review(pod(host_port=80))).encode())
        assert routed_to(pod(host_port=80), answer["response"]) == ROUTED_HERE


async def test_a_skewed_clock_does_not_stop_routing_while_the_lease_moves(
    fake: FakeApiServer, tmp_path: Path
) -> None:
    """Freshness is judged by our clock from when renewTime moved: a webhook whose wall clock is
    10 minutes ahead routes once it has seen one renewal, and stops when renewals stop."""
    now = [1000.0]
    lease = lease_watch(fake, tmp_path, clock=lambda: now[0], wall_clock=lambda: time.time() + 600)
    assert lease.api is not None
    async with lease.api:
        await lease.refresh()
        assert lease.verdict() == LEASE_STALE, "first sight: the wall clocks say 10 min old"
        now[0] += 2
        fake.put_lease(LEASE_NS, LEASE_NAME, holder="a", renewed=datetime.now(UTC))
        await lease.refresh()
        assert lease.verdict() == ALIVE
        # Renewed between the two reads: counted from the earlier one (t=1000), conservatively.
        now[0] += 27  # t=1029: 29 s without a renewal, 2 x 15 s is the limit
        await lease.refresh()
        assert lease.verdict() == ALIVE
        now[0] += 2  # t=1031
        await lease.refresh()
        assert lease.verdict() == LEASE_STALE


async def get_metrics(url: str, pki: PKI) -> str:
    """GET /metrics over HTTPS."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/metrics", ssl=pki.client_context()) as response,
    ):
        return await response.text()
