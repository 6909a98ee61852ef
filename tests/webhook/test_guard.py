"""The preemption guard: pod DELETE reviews by schedulers, users, the kubelet, controllers and
evictions, decided in a table and answered over real HTTPS as AdmissionReview v1."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from extender.core.portspec import parse_port_specs
from extender.webhook.app import DenialLog
from extender.webhook.guard import (
    DENIED_PROTECTED,
    DENIED_PROTECTED_PORT,
    NOT_A_POD_DELETE,
    NOT_A_SCHEDULER,
    NOT_PROTECTED,
    GuardPolicy,
    guard_decision,
)
from tests.fakeapi import FakeApiServer
from tests.pki import PKI
from tests.webhook.test_webhook import get_metrics, lease_watch, post, serving

POLICY = GuardPolicy(protected_ports=parse_port_specs("80/TCP,443/TCP"))
SCHEDULER = {"username": "system:kube-scheduler", "groups": ["system:authenticated"]}
SECOND_SCHEDULER = {
    "username": "system:serviceaccount:hostport-system:hostport-extender",
    "uid": "4b1b7f42-5d5e-4d7a-9a0c-7c1f2a3b4c5d",
    "groups": [
        "system:serviceaccounts",
        "system:serviceaccounts:hostport-system",
        "system:authenticated",
    ],
}
KUBELET = {"username": "system:node:ip-10-0-1-11.ec2.internal", "groups": ["system:nodes"]}
USER = {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]}
CONTROLLER = {"username": "system:serviceaccount:kube-system:replicaset-controller"}
GARBAGE_COLLECTOR = {"username": "system:serviceaccount:kube-system:generic-garbage-collector"}


def victim(
    *,
    name: str = "ingress-nginx-controller-7d9c5-4xkq2",
    namespace: str = "ingress-nginx",
    host_port: int | None = 80,
    protocol: str = "TCP",
    protected: str | None = None,
    listen: str | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    """A running pod, as the API server puts it in a DELETE review's oldObject."""
    annotations: dict[str, str] = {}
    if protected is not None:
        annotations["hostports.dev/protected"] = protected
    if listen is not None:
        annotations["hostports.dev/listen"] = listen
    port: dict[str, Any] = {"name": "http", "containerPort": 80, "protocol": protocol}
    if host_port is not None:
        port["hostPort"] = host_port
    spec: dict[str, Any] = {
        "nodeName": "ip-10-0-1-11.ec2.internal",
        "schedulerName": "default-scheduler",
        "containers": [{"name": "controller", "image": "ingress-nginx", "ports": [port]}],
    }
    if listen is not None:
        spec["hostNetwork"] = True
        spec["containers"][0]["ports"] = []
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": "0d1c2b3a-1111-4222-8333-444455556666",
            "annotations": annotations,
        },
        "spec": spec,
        "status": {"phase": phase},
    }


def delete_review(raw_pod: dict[str, Any], user: dict[str, Any], **request: Any) -> dict[str, Any]:
    """An AdmissionReview v1 for DELETE of `raw_pod` (object null, oldObject the pod)."""
    meta = raw_pod["metadata"]
    body: dict[str, Any] = {
        "uid": "3f2e1d0c-9b8a-4765-8432-10fedcba9876",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "name": meta["name"],
        "namespace": meta["namespace"],
        "operation": "DELETE",
        "userInfo": user,
        "object": None,
        "oldObject": raw_pod,
        "dryRun": False,
        "options": {"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1"},
    }
    body.update(request)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": body}


def eviction_review(raw_pod: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """`kubectl drain`'s eviction: a CREATE of pods/eviction, never a DELETE review."""
    meta = raw_pod["metadata"]
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
    }
    return delete_review(
        raw_pod,
        user,
        operation="CREATE",
        subResource="eviction",
        kind={"group": "policy", "version": "v1", "kind": "Eviction"},
        object=eviction,
        oldObject=None,
        options={"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
    )


ANNOTATED = victim(host_port=80, protected="true")
BY_PORT = victim(host_port=80)
AGENT = victim(
    name="eks-pod-identity-agent-h5k8m",
    namespace="kube-system",
    listen="80/TCP@169.254.170.23",
)

GUARD_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("scheduler, annotated", delete_review(ANNOTATED, SCHEDULER), DENIED_PROTECTED),
    (
        "scheduler, annotated True (any case)",
        delete_review(victim(protected=" True "), SCHEDULER),
        DENIED_PROTECTED,
    ),
    ("scheduler, holds protected 80/TCP", delete_review(BY_PORT, SCHEDULER), DENIED_PROTECTED_PORT),
    (
        "scheduler, holds protected 443/TCP",
        delete_review(victim(host_port=443), SCHEDULER),
        DENIED_PROTECTED_PORT,
    ),
    (
        "scheduler, annotated listener on a protected port",
        delete_review(AGENT, SCHEDULER),
        DENIED_PROTECTED_PORT,
    ),
    ("second scheduler, annotated", delete_review(ANNOTATED, SECOND_SCHEDULER), DENIED_PROTECTED),
    (
        "scheduler, 80/UDP is not 80/TCP",
        delete_review(victim(protocol="UDP"), SCHEDULER),
        NOT_PROTECTED,
    ),
    (
        "scheduler, unprotected port",
        delete_review(victim(host_port=8080), SCHEDULER),
        NOT_PROTECTED,
    ),
    ("scheduler, no host port", delete_review(victim(host_port=None), SCHEDULER), NOT_PROTECTED),
    (
        "scheduler, annotation false",
        delete_review(victim(host_port=8080, protected="false"), SCHEDULER),
        NOT_PROTECTED,
    ),
    (
        "scheduler, finished pod",
        delete_review(victim(protected="true", phase="Failed"), SCHEDULER),
        NOT_PROTECTED,
    ),
    ("user", delete_review(ANNOTATED, USER), NOT_A_SCHEDULER),
    ("kubelet", delete_review(ANNOTATED, KUBELET), NOT_A_SCHEDULER),
    ("replicaset controller", delete_review(ANNOTATED, CONTROLLER), NOT_A_SCHEDULER),
    ("garbage collector", delete_review(BY_PORT, GARBAGE_COLLECTOR), NOT_A_SCHEDULER),
    ("eviction (kubectl drain)", eviction_review(ANNOTATED, USER), NOT_A_POD_DELETE),
    ("eviction by a scheduler account", eviction_review(ANNOTATED, SCHEDULER), NOT_A_POD_DELETE),
    (
        "a pod create by a scheduler",
        delete_review(ANNOTATED, SCHEDULER, operation="CREATE", object=ANNOTATED, oldObject=None),
        NOT_A_POD_DELETE,
    ),
]
DENIED = (DENIED_PROTECTED, DENIED_PROTECTED_PORT)


DELETE_CASES = [c for c in GUARD_CASES if c[1]["request"]["operation"] == "DELETE"]


@pytest.mark.parametrize(
    ("review", "reason"), [c[1:] for c in DELETE_CASES], ids=[c[0] for c in DELETE_CASES]
)
def test_guard_decision(review: dict[str, Any], reason: str) -> None:
    """Only a scheduler's DELETE of a protected pod is refused (non-DELETEs: the HTTPS test)."""
    request = review["request"]
    decision = guard_decision(request["oldObject"], request["userInfo"]["username"], POLICY)
    assert decision.reason == reason
    assert decision.allowed == (reason not in DENIED)


def test_denial_names_the_pod_and_the_port() -> None:
    """The message says which pod, which port, why, and who may still delete it."""
    annotated = guard_decision(ANNOTATED, "system:kube-scheduler", POLICY)
    assert annotated.message == (
        "pod ingress-nginx/ingress-nginx-controller-7d9c5-4xkq2 is protected "
        '(hostports.dev/protected: "true") and holds host port 80/TCP: system:kube-scheduler may '
        "not delete it to make room (hostport-extender preemption guard; users, controllers, the "
        "kubelet and evictions may)"
    )
    agent = guard_decision(AGENT, "system:kube-scheduler", POLICY)
    assert agent.message.startswith(
        "pod kube-system/eks-pod-identity-agent-h5k8m holds protected port 80/TCP@169.254.170.23: "
    )


def test_without_protected_ports_only_the_annotation_protects() -> None:
    """With no protected_ports configured, holding :80 alone does not protect a pod."""
    assert guard_decision(BY_PORT, "system:kube-scheduler", GuardPolicy()).reason == NOT_PROTECTED


@pytest.fixture
async def guard_url(pki: PKI, fake: FakeApiServer, tmp_path: Path) -> AsyncIterator[str]:
    async with serving(pki, lease_watch(fake, tmp_path), guard=POLICY) as url:
        yield url


@pytest.mark.parametrize(
    ("review", "reason"), [c[1:] for c in GUARD_CASES], ids=[c[0] for c in GUARD_CASES]
)
async def test_guard_over_https(
    pki: PKI, guard_url: str, review: dict[str, Any], reason: str
) -> None:
    """Each case answered over HTTPS: same uid; a denial carries a 403 status with the message."""
    status, answer = await post(guard_url, pki, json.dumps(review).encode(), "/validate")
    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == review["request"]["uid"]
    if reason in DENIED:
        assert response["allowed"] is False
        assert response["status"]["code"] == 403
        assert review["request"]["name"] in response["status"]["message"]
        assert "/TCP" in response["status"]["message"]
    else:
        assert response == {"uid": review["request"]["uid"], "allowed": True}


async def test_denials_are_counted(pki: PKI, guard_url: str) -> None:
    """hostport_extender_guard_decisions_total counts each decision, denials by kind."""
    for review in (
        delete_review(ANNOTATED, SCHEDULER),
        delete_review(ANNOTATED, SCHEDULER),
        delete_review(BY_PORT, SCHEDULER),
        delete_review(ANNOTATED, KUBELET),
    ):
        await post(guard_url, pki, json.dumps(review).encode(), "/validate")
    metrics = await get_metrics(guard_url, pki)
    assert 'hostport_extender_guard_decisions_total{decision="denied-protected"} 2.0' in metrics
    assert 'hostport_extender_guard_decisions_total{decision="denied-protected-port"} 1.0' in (
        metrics
    )
    assert 'hostport_extender_guard_decisions_total{decision="not-a-scheduler"} 1.0' in metrics


MALFORMED: list[tuple[str, bytes, str]] = [
    ("not json", b"\x00\xff", "body is not JSON"),
    ("a string", b'"DELETE"', "body is not a JSON object"),
    (
        "v1beta1",
        json.dumps(
            {**delete_review(ANNOTATED, SCHEDULER), "apiVersion": "admission.k8s.io/v1beta1"}
        ).encode(),
        "is not admission.k8s.io/v1",
    ),
    (
        "no uid",
        json.dumps(delete_review(ANNOTATED, SCHEDULER, uid=None)).encode(),
        "has no uid",
    ),
    (
        "DELETE without oldObject",
        json.dumps(delete_review(ANNOTATED, SCHEDULER, oldObject=None)).encode(),
        "oldObject is not a Pod",
    ),
    (
        "DELETE without a username",
        json.dumps(delete_review(ANNOTATED, {"groups": ["system:authenticated"]})).encode(),
        "userInfo.username is missing",
    ),
]


@pytest.mark.parametrize(
    ("body", "message"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
async def test_malformed_delete_reviews_get_a_clear_400(
    pki: PKI, guard_url: str, body: bytes, message: str
) -> None:
    """Malformed reviews get HTTP 400 with a one-line JSON error; the server keeps serving."""
    status, answer = await post(guard_url, pki, body, "/validate")
    assert status == 400
    assert message in answer["error"]
    assert "\n" not in answer["error"]
    assert "Traceback" not in answer["error"]
    status, _ = await post(
        guard_url, pki, json.dumps(delete_review(ANNOTATED, USER)).encode(), "/validate"
    )
    assert status == 200


async def test_a_retrying_scheduler_is_logged_once_and_counted_every_time(
    pki: PKI, guard_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused scheduler retries in a tight loop: one warning per pod, every refusal counted."""
    caplog.set_level(logging.DEBUG, logger="extender.webhook.app")
    body = json.dumps(delete_review(ANNOTATED, SCHEDULER)).encode()
    for _ in range(5):
        await post(guard_url, pki, body, "/validate")
    other = json.dumps(delete_review(victim(name="other", protected="true"), SCHEDULER)).encode()
    await post(guard_url, pki, other, "/validate")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage().split(":")[0] for r in warnings] == ["guard denied-protected"] * 2
    assert [getattr(r, "pod", None) for r in warnings] == [ANNOTATED["metadata"]["name"], "other"]
    metrics = await get_metrics(guard_url, pki)
    assert 'hostport_extender_guard_decisions_total{decision="denied-protected"} 6.0' in metrics


def test_denial_log_warns_again_after_the_interval() -> None:
    """Once the interval has passed, the same pod's refusal is a warning again."""
    now = [0.0]
    denials = DenialLog(interval=60.0, clock=lambda: now[0])
    assert denials.first("ns/a") is True
    now[0] = 59.0
    assert denials.first("ns/a") is False
    assert denials.first("ns/b") is True
    now[0] = 60.0
    assert denials.first("ns/a") is True
