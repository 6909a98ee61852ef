"""The routing webhook: send pods that use host ports to the hostport-aware scheduler.

On managed control planes the default scheduler cannot call an extender, so a second scheduler
does, and this mutating webhook sets `spec.schedulerName` on the pods it must see (AdmissionReview
v1, JSON patch). `route_decision` is pure and table-tested; `review_response` turns one
AdmissionReview into its answer; `mutate` is the thin aiohttp handler. The webhook must never
route the extender's own pods nor system namespaces: they have to start with the default
scheduler, or the hostport-aware scheduler could never come up (the VPC CNI bootstrap story).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from extender.errors import ExtenderError
from extender.server.metrics import METRICS_KEY, Metrics
from extender.server.metrics import install as metrics_install

log = logging.getLogger(__name__)

ROUTED_SCHEDULER = "hostport-aware-scheduler"
DEFAULT_SCHEDULER = "default-scheduler"
SELF_LABEL = ("app.kubernetes.io/name", "hostport-extender")
DEFAULT_EXCLUDED_NAMESPACES = frozenset({"kube-system", "kube-node-lease", "hostport-system"})

# Every reason a review can end with; bounded, so it can label a metric.
ROUTED = "routed"
ALREADY_ROUTED = "already-routed"
NO_HOST_PORTS = "no-host-ports"
OTHER_SCHEDULER = "other-scheduler"
NODE_NAME_SET = "node-name-set"
EXTENDER_POD = "extender-pod"
EXCLUDED_NAMESPACE = "excluded-namespace"
NOT_A_POD_CREATE = "not-a-pod-create"
MAX_REVIEW_BYTES = 4 * 1024 * 1024
"""A pod spec is bounded by etcd's 1.5 MiB object limit; the review wraps it (old + new object)."""


class ReviewError(ExtenderError):
    """A request that is not a usable AdmissionReview v1; answered with HTTP 400 and this text."""


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """Which scheduler to route to and which pods to leave alone whatever they ask for."""

    scheduler_name: str = ROUTED_SCHEDULER
    excluded_namespaces: frozenset[str] = DEFAULT_EXCLUDED_NAMESPACES
    self_label: tuple[str, str] = SELF_LABEL


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one pod: the JSON patch (empty when left alone) and why."""

    reason: str
    patch: tuple[dict[str, Any], ...] = field(default=())


def uses_host_ports(raw_pod: Mapping[str, Any]) -> bool:
    """True for hostNetwork pods and pods with any hostPort in a container or init container."""
    spec = raw_pod.get("spec")
    if not isinstance(spec, Mapping):
        return False
    if spec.get("hostNetwork") is True:
        return True
    for group in ("containers", "initContainers"):
        containers = spec.get(group)
        if not isinstance(containers, list):
            continue
        for container in containers:
            ports = container.get("ports") if isinstance(container, Mapping) else None
            if not isinstance(ports, list):
                continue
            for port in ports:
                if isinstance(port, Mapping) and _positive(port.get("hostPort")):
                    return True
    return False


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def route_decision(raw_pod: Mapping[str, Any], namespace: str, policy: RoutingPolicy) -> Decision:
    """Decide whether to route one pod; the order of the checks is the order of precedence."""
    if namespace in policy.excluded_namespaces:
        return Decision(EXCLUDED_NAMESPACE)
    metadata = raw_pod.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
    key, value = policy.self_label
    if isinstance(labels, Mapping) and labels.get(key) == value:
        return Decision(EXTENDER_POD)
    spec = raw_pod.get("spec")
    if not isinstance(spec, Mapping):
        return Decision(NO_HOST_PORTS)
    if spec.get("nodeName"):
        return Decision(NODE_NAME_SET)
    current = spec.get("schedulerName") or DEFAULT_SCHEDULER
    if current == policy.scheduler_name:
        return Decision(ALREADY_ROUTED)
    if current != DEFAULT_SCHEDULER:
        return Decision(OTHER_SCHEDULER)
    if not uses_host_ports(raw_pod):
        return Decision(NO_HOST_PORTS)
    # "add" also replaces an existing member (RFC 6902 4.1), so one op covers both cases.
    return Decision(
        ROUTED, ({"op": "add", "path": "/spec/schedulerName", "value": policy.scheduler_name},)
    )


def review_response(raw_review: object, policy: RoutingPolicy) -> tuple[dict[str, Any], Decision]:
    """The AdmissionReview v1 answer to `raw_review`; ReviewError if it is not one."""
    if not isinstance(raw_review, Mapping):
        raise ReviewError("body is not a JSON object")
    if raw_review.get("apiVersion") != "admission.k8s.io/v1":
        raise ReviewError(
            f"apiVersion {raw_review.get('apiVersion')!r} is not admission.k8s.io/v1 "
            "(set admissionReviewVersions: [v1])"
        )
    if raw_review.get("kind") != "AdmissionReview":
        raise ReviewError(f"kind {raw_review.get('kind')!r} is not AdmissionReview")
    request = raw_review.get("request")
    if not isinstance(request, Mapping):
        raise ReviewError("AdmissionReview has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewError("AdmissionReview request has no uid")

    resource = request.get("resource")
    is_pod = isinstance(resource, Mapping) and (
        resource.get("group", "") == "" and resource.get("resource") == "pods"
    )
    if not is_pod or request.get("operation") != "CREATE" or request.get("subResource"):
        decision = Decision(NOT_A_POD_CREATE)
    else:
        raw_pod = request.get("object")
        if not isinstance(raw_pod, Mapping):
            raise ReviewError(f"request {uid}: object is not a Pod")
        namespace = request.get("namespace")
        if not isinstance(namespace, str):
            metadata = raw_pod.get("metadata")
            namespace = metadata.get("namespace", "") if isinstance(metadata, Mapping) else ""
        decision = route_decision(raw_pod, str(namespace), policy)

    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if decision.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(list(decision.patch))).decode()
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
    return review, decision


POLICY_KEY = web.AppKey("routing_policy", RoutingPolicy)


async def mutate(request: web.Request) -> web.Response:
    """POST /mutate: answer one AdmissionReview; malformed input gets 400 and a one-line reason."""
    policy = request.app[POLICY_KEY]
    body = await request.read()
    try:
        try:
            raw_review = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise ReviewError(f"body is not JSON: {error}") from error
        review, decision = review_response(raw_review, policy)
    except ReviewError as error:
        log.warning("rejected admission request: %s", error)
        return web.json_response({"error": str(error)}, status=400, dumps=_dumps)
    request_info = raw_review["request"]
    log.info(
        "admission %s",
        decision.reason,
        extra={
            "uid": request_info.get("uid"),
            "namespace": request_info.get("namespace"),
            "pod": request_info.get("name") or _generate_name(request_info),
            "decision": decision.reason,
        },
    )
    request.app[METRICS_KEY].admission_reviews.labels(decision=decision.reason).inc()
    return web.json_response(review, dumps=_dumps)


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process serves HTTPS; the webhook has no other state to wait for."""
    return web.Response(text="ok")


def create_webhook_app(policy: RoutingPolicy, metrics: Metrics) -> web.Application:
    """The webhook's application: POST /mutate, GET /healthz, GET /metrics."""
    app = web.Application(client_max_size=MAX_REVIEW_BYTES)
    app[POLICY_KEY] = policy
    metrics_install(app, metrics)
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/healthz", healthz)
    return app


def _generate_name(request_info: Mapping[str, Any]) -> str:
    raw_pod = request_info.get("object")
    metadata = raw_pod.get("metadata") if isinstance(raw_pod, Mapping) else None
    return str(metadata.get("generateName", "")) if isinstance(metadata, Mapping) else ""


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()
