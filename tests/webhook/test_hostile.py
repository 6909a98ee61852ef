"""Whatever JSON arrives, each webhook answers or refuses it as malformed: never an exception."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.portspec import parse_port_specs
from extender.core.routing import RoutingPolicy
from extender.webhook.app import (
    ReviewError,
    guard_response,
    materialise_response,
    review_response,
)
from extender.webhook.guard import GuardPolicy
from tests.webhook.test_guard import SCHEDULER, delete_review, victim
from tests.webhook.test_webhook import pod, review

SCALARS = st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=12)
KEYS = st.sampled_from(
    [
        "metadata", "spec", "annotations", "labels", "ownerReferences", "kind", "name",
        "containers", "initContainers", "ports", "hostPort", "containerPort", "hostIP",
        "protocol", "hostNetwork", "nodeName", "schedulerName", "hostports.dev/listen",
        "hostports.dev/protected", "k8s-app", "status", "phase", "restartPolicy",
    ]
)  # fmt: skip
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)
GUARD = GuardPolicy(protected_ports=parse_port_specs("80/TCP"))


def mutate_pod(base: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """`base` with `value` put at `path` (creating objects on the way)."""
    target = base
    for key in path[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            child = target[key] = {}
        target = child
    target[path[-1]] = value
    return base


PATHS = st.lists(KEYS, min_size=1, max_size=4)


@settings(max_examples=200, deadline=None)
@given(path=PATHS, value=JSON)
def test_every_webhook_survives_any_pod_shape(path: list[str], value: Any) -> None:
    """A pod with any field of any shape: each handler answers or raises ReviewError only."""
    raw_pod = mutate_pod(pod(host_network=True), path, value)
    for call in (
        lambda: review_response(review(raw_pod), RoutingPolicy()),
        lambda: materialise_response(review(raw_pod), True),
        lambda: guard_response(delete_review(victim(), SCHEDULER, oldObject=raw_pod), GUARD),
    ):
        try:
            answer, _ = call()
        except ReviewError:
            continue
        assert answer["response"]["allowed"] in (True, False)
