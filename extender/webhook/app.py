"""The webhooks: route host-port pods to the hostport-aware scheduler, guard protected pods.

On managed control planes the default scheduler cannot call an extender, so a second scheduler
does, and this mutating webhook sets `spec.schedulerName` on the pods it must see (AdmissionReview
v1, JSON patch), in every namespace including kube-system. Two things keep that from deadlocking
the cluster (the VPC CNI bootstrap story): the pods the scheduler itself depends on (the CNI,
kube-proxy, the extender's own pods) are never routed, and no pod is routed while the scheduler's
Lease is not fresh (extender/webhook/lease.py), so a scheduler that is down sends new pods back
to the default scheduler instead of leaving them Pending.

The decisions are pure and table-tested (extender/core/routing.py, core/listeners.py,
webhook/guard.py); `*_response` turn one AdmissionReview into its answer; the handlers are thin.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from extender.core.listeners import ListenPlan, json_patch, plan_listen_ports
from extender.core.routing import ALIVE, Decision, RoutingPolicy, route_decision
from extender.errors import ExtenderError
from extender.server.metrics import METRICS_KEY, Metrics
from extender.server.metrics import install as metrics_install
from extender.webhook.guard import NOT_A_POD_DELETE, GuardDecision, GuardPolicy, guard_decision
from extender.webhook.lease import LeaseWatch

log = logging.getLogger(__name__)

NOT_A_POD_CREATE = "not-a-pod-create"
MAX_REVIEW_BYTES = 4 * 1024 * 1024
"""A pod spec is bounded by etcd's 1.5 MiB object limit; the review wraps it (old + new object)."""


class ReviewError(ExtenderError):
    """A request that is not a usable AdmissionReview v1; answered with HTTP 400 and this text."""


def parse_review(raw_review: object) -> Mapping[str, Any]:
    """The `request` of an AdmissionReview v1, with a uid; ReviewError if it is not one."""
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
    return request


def is_pod_request(request: Mapping[str, Any], operation: str) -> bool:
    """True for `operation` on the pods resource itself (no subresource such as binding)."""
    resource = request.get("resource")
    return (
        isinstance(resource, Mapping)
        and resource.get("group", "") == ""
        and resource.get("resource") == "pods"
        and request.get("operation") == operation
        and not request.get("subResource")
    )


def answer(uid: str, **response: Any) -> dict[str, Any]:
    """An AdmissionReview v1 response document."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": uid, **response},
    }


def review_response(
    raw_review: object, policy: RoutingPolicy, liveness: str = ALIVE
) -> tuple[dict[str, Any], Decision]:
    """The AdmissionReview v1 answer to `raw_review`; ReviewError if it is not one."""
    request = parse_review(raw_review)
    uid = str(request["uid"])
    if not is_pod_request(request, "CREATE"):
        decision = Decision(NOT_A_POD_CREATE)
    else:
        raw_pod = request.get("object")
        if not isinstance(raw_pod, Mapping):
            raise ReviewError(f"request {uid}: object is not a Pod")
        decision = route_decision(raw_pod, request_namespace(request, raw_pod), policy, liveness)

    response: dict[str, Any] = {"allowed": True}
    if decision.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(list(decision.patch))).decode()
    return answer(uid, **response), decision


def request_namespace(request: Mapping[str, Any], raw_pod: Mapping[str, Any]) -> str:
    """The request's namespace, else the object's (a CREATE always carries the former)."""
    namespace = request.get("namespace")
    if isinstance(namespace, str):
        return namespace
    metadata = raw_pod.get("metadata")
    found = metadata.get("namespace", "") if isinstance(metadata, Mapping) else ""
    return str(found)


# Every reason a /materialise review can end with (bounded: a metric label).
MATERIALISED = "materialised"
NOTHING_TO_DECLARE = "nothing-to-declare"
INVALID_ANNOTATION = "invalid-annotation"
MATERIALISE_DISABLED = "materialise-disabled"


@dataclass(frozen=True, slots=True)
class ListenDecision:
    """The outcome of one /materialise review: why, and the plan behind any patch."""

    reason: str
    plan: ListenPlan = field(default_factory=ListenPlan)


def materialise_response(
    raw_review: object, enabled: bool
) -> tuple[dict[str, Any], ListenDecision]:
    """Declare a new hostNetwork pod's annotated listeners; never refuses a pod."""
    request = parse_review(raw_review)
    uid = str(request["uid"])
    if not is_pod_request(request, "CREATE"):
        return answer(uid, allowed=True), ListenDecision(NOT_A_POD_CREATE)
    raw_pod = request.get("object")
    if not isinstance(raw_pod, Mapping):
        raise ReviewError(f"request {uid}: object is not a Pod")
    if not enabled:
        return answer(uid, allowed=True), ListenDecision(MATERIALISE_DISABLED)
    plan = plan_listen_ports(raw_pod)
    warnings = [f"hostport-extender: {text}" for text in (plan.error, *plan.notes) if text]
    response: dict[str, Any] = {"allowed": True}
    if warnings:
        response["warnings"] = warnings
    if plan.error:
        return answer(uid, **response), ListenDecision(INVALID_ANNOTATION, plan)
    patch = json_patch(plan, raw_pod)
    if not patch:
        return answer(uid, **response), ListenDecision(NOTHING_TO_DECLARE, plan)
    response["patchType"] = "JSONPatch"
    response["patch"] = base64.b64encode(orjson.dumps(patch)).decode()
    return answer(uid, **response), ListenDecision(MATERIALISED, plan)


def guard_response(raw_review: object, policy: GuardPolicy) -> tuple[dict[str, Any], GuardDecision]:
    """The AdmissionReview v1 answer of the preemption guard; ReviewError if it is not one."""
    request = parse_review(raw_review)
    uid = str(request["uid"])
    if not is_pod_request(request, "DELETE"):
        decision = GuardDecision(NOT_A_POD_DELETE)
    else:
        raw_pod = request.get("oldObject")
        if not isinstance(raw_pod, Mapping):
            raise ReviewError(f"request {uid}: oldObject is not a Pod")
        user_info = request.get("userInfo")
        username = user_info.get("username") if isinstance(user_info, Mapping) else None
        if not isinstance(username, str):
            raise ReviewError(f"request {uid}: userInfo.username is missing")
        decision = guard_decision(raw_pod, username, policy)
    if decision.allowed:
        return answer(uid, allowed=True), decision
    status = {"code": 403, "reason": "Forbidden", "message": decision.message}
    return answer(uid, allowed=False, status=status), decision


@dataclass(frozen=True, slots=True)
class WebhookCounters:
    """The webhook's own counters, on the process's registry."""

    guard: Counter
    listen: Counter
    declared_ports: Counter

    @classmethod
    def register(cls, metrics: Metrics) -> WebhookCounters:
        return cls(
            listen=Counter(
                "hostport_extender_listen_reviews",
                "Pod CREATEs /materialise answered, by decision (materialised = ports declared).",
                ["decision"],
                registry=metrics.registry,
            ),
            declared_ports=Counter(
                "hostport_extender_listen_ports_declared",
                "Container ports /materialise declared from hostports.dev/listen entries.",
                registry=metrics.registry,
            ),
            guard=Counter(
                "hostport_extender_guard_decisions",
                "Pod DELETEs the preemption guard answered, by decision (denied-* = refused).",
                ["decision"],
                registry=metrics.registry,
            ),
        )


POLICY_KEY = web.AppKey("routing_policy", RoutingPolicy)
MATERIALISE_KEY = web.AppKey("materialise_listeners", bool)
GUARD_KEY = web.AppKey("guard_policy", GuardPolicy)
LEASE_KEY = web.AppKey("scheduler_lease", LeaseWatch)
COUNTERS_KEY = web.AppKey("webhook_counters", WebhookCounters)
MAX_DENIAL_KEYS = 4096


async def read_review(request: web.Request) -> tuple[object, Mapping[str, Any]]:
    """The decoded body and its AdmissionReview request; ReviewError when it is neither."""
    body = await request.read()
    try:
        raw_review = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ReviewError(f"body is not JSON: {error}") from error
    return raw_review, parse_review(raw_review)


def bad_review(error: ReviewError) -> web.Response:
    """HTTP 400 with a one-line JSON error (the API server logs it; no traceback ever)."""
    log.warning("rejected admission request: %s", error)
    message = " ".join(str(error).split())
    return web.json_response({"error": message}, status=400, dumps=_dumps)


async def mutate(request: web.Request) -> web.Response:
    """POST /mutate: answer one AdmissionReview; malformed input gets 400 and a one-line reason."""
    policy = request.app[POLICY_KEY]
    lease = request.app[LEASE_KEY]
    try:
        raw_review, request_info = await read_review(request)
        review, decision = review_response(raw_review, policy, lease.verdict())
    except ReviewError as error:
        return bad_review(error)
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


async def materialise(request: web.Request) -> web.Response:
    """POST /materialise: declare annotated listeners as container ports (opt-in)."""
    try:
        raw_review, request_info = await read_review(request)
        review, decision = materialise_response(raw_review, request.app[MATERIALISE_KEY])
    except ReviewError as error:
        return bad_review(error)
    plan = decision.plan
    log.log(
        logging.WARNING if decision.reason == INVALID_ANNOTATION else logging.INFO,
        "listen %s%s",
        decision.reason,
        f": {plan.error}" if plan.error else (f": declared {plan.summary}" if plan.added else ""),
        extra={
            "uid": request_info.get("uid"),
            "namespace": request_info.get("namespace"),
            "pod": request_info.get("name") or _generate_name(request_info),
            "decision": decision.reason,
        },
    )
    counters = request.app[COUNTERS_KEY]
    counters.listen.labels(decision=decision.reason).inc()
    if decision.reason == MATERIALISED:
        counters.declared_ports.inc(len(plan.added))
    return web.json_response(review, dumps=_dumps)


class DenialLog:
    """Which refusals to log at warning: a refused scheduler retries its DELETE 55-80 times a
    second (protocol.md §1.12), so each pod's refusal is a warning once a minute, then debug
    (the counter still counts every one)."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}

    def first(self, key: str) -> bool:
        """True when `key` was not logged in the last interval (and remember it now)."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        if len(self._last) >= MAX_DENIAL_KEYS:
            # Bounded: forget the keys whose interval is over (a flood of distinct pods).
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
        self._last[key] = now
        return True


DENIAL_LOG_KEY = web.AppKey("denial_log", DenialLog)


async def validate(request: web.Request) -> web.Response:
    """POST /validate: the preemption guard on pod DELETE; malformed input gets 400."""
    try:
        raw_review, request_info = await read_review(request)
        review, decision = guard_response(raw_review, request.app[GUARD_KEY])
    except ReviewError as error:
        return bad_review(error)
    user_info = request_info.get("userInfo")
    pod_key = f"{request_info.get('namespace')}/{request_info.get('name')}"
    level = logging.INFO
    if not decision.allowed:
        level = logging.WARNING if request.app[DENIAL_LOG_KEY].first(pod_key) else logging.DEBUG
    log.log(
        level,
        "guard %s%s",
        decision.reason,
        f": {decision.message}" if decision.message else "",
        extra={
            "uid": request_info.get("uid"),
            "namespace": request_info.get("namespace"),
            "pod": request_info.get("name"),
            "user": user_info.get("username") if isinstance(user_info, Mapping) else None,
            "decision": decision.reason,
        },
    )
    request.app[COUNTERS_KEY].guard.labels(decision=decision.reason).inc()
    return web.json_response(review, dumps=_dumps)


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process serves HTTPS (a stale Lease is not ill health: we answer)."""
    return web.Response(text="ok")


class _LeaseGauges(Collector):
    """Scrape-time gauges of the scheduler Lease as the webhook last read it."""

    def __init__(self, lease: LeaseWatch) -> None:
        self.lease = lease

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "hostport_extender_webhook_scheduler_alive",
            "1 while the hostport-aware scheduler's Lease is fresh (pods are routed), else 0.",
            value=1 if self.lease.verdict() == ALIVE else 0,
        )
        age = self.lease.age_seconds()
        if age is not None:
            yield GaugeMetricFamily(
                "hostport_extender_webhook_scheduler_lease_age_seconds",
                "Seconds since the scheduler's Lease was last renewed, as last read.",
                value=age,
            )


async def _lease_refresher(app: web.Application) -> AsyncIterator[None]:
    """Read the Lease once before serving, then keep re-reading it in the background."""
    lease = app[LEASE_KEY]
    if lease.api is None:
        yield
        return
    await lease.api.open()
    try:
        await lease.refresh()
        task = asyncio.create_task(lease.run(), name="scheduler-lease")
        try:
            yield
        finally:
            task.cancel()
            # wait() does not re-raise the task's cancellation, yet still lets ours through.
            await asyncio.wait([task])
    finally:
        await lease.api.close()


def create_webhook_app(
    policy: RoutingPolicy,
    metrics: Metrics,
    lease: LeaseWatch,
    guard: GuardPolicy | None = None,
    *,
    materialise_listeners: bool = False,
) -> web.Application:
    """The webhook's application: POST /mutate, /materialise and /validate, GET /healthz and
    /metrics."""
    app = web.Application(client_max_size=MAX_REVIEW_BYTES)
    app[POLICY_KEY] = policy
    app[MATERIALISE_KEY] = materialise_listeners
    app[GUARD_KEY] = guard if guard is not None else GuardPolicy()
    app[LEASE_KEY] = lease
    app[COUNTERS_KEY] = WebhookCounters.register(metrics)
    app[DENIAL_LOG_KEY] = DenialLog()
    metrics_install(app, metrics)
    metrics.registry.register(_LeaseGauges(lease))
    app.cleanup_ctx.append(_lease_refresher)
    app.router.add_post("/mutate", mutate)
    app.router.add_post("/materialise", materialise)
    app.router.add_post("/validate", validate)
    app.router.add_get("/healthz", healthz)
    return app


def _generate_name(request_info: Mapping[str, Any]) -> str:
    raw_pod = request_info.get("object")
    metadata = raw_pod.get("metadata") if isinstance(raw_pod, Mapping) else None
    return str(metadata.get("generateName", "")) if isinstance(metadata, Mapping) else ""


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()
