"""/materialise over real HTTPS: AdmissionReview v1 CREATEs of hostNetwork pods come back with a
JSON patch declaring their annotated listeners, or unchanged with a warning."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.core.test_listeners import CASES, agent, apply, declared, validation_errors
from tests.fakeapi import FakeApiServer
from tests.pki import PKI
from tests.webhook.test_webhook import get_metrics, lease_watch, post, review, serving


@pytest.fixture
async def url(pki: PKI, fake: FakeApiServer, tmp_path: Path) -> AsyncIterator[str]:
    async with serving(pki, lease_watch(fake, tmp_path), materialise_listeners=True) as base:
        yield base


async def materialise(url: str, pki: PKI, raw_pod: dict[str, Any]) -> dict[str, Any]:
    """POST one CREATE review to /materialise; the AdmissionReview response."""
    status, answer = await post(
        url, pki, json.dumps(review(raw_pod, "kube-system")).encode(), "/materialise"
    )
    assert status == 200
    response: dict[str, Any] = answer["response"]
    assert response["allowed"] is True
    return response


@pytest.mark.parametrize(
    ("raw_pod", "added", "notes"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_declares_the_annotated_listeners(
    pki: PKI, url: str, raw_pod: dict[str, Any], added: list[str], notes: list[str]
) -> None:
    """The patched pod declares exactly the added entries; skipped ones come back as warnings."""
    response = await materialise(url, pki, raw_pod)
    assert response.get("warnings", []) == [f"hostport-extender: {note}" for note in notes]
    if not added:
        assert "patch" not in response
        return
    assert response["patchType"] == "JSONPatch"
    patched = apply(raw_pod, json.loads(base64.b64decode(response["patch"])))
    assert validation_errors(patched) == []
    new = [entry for entry in declared(patched) if entry not in declared(raw_pod)]
    assert sorted(spec for _, spec, _, _ in new) == sorted(added)


async def test_invalid_annotation_admits_the_pod_unchanged_with_a_warning(
    pki: PKI, url: str
) -> None:
    """A typo in hostports.dev/listen never blocks a pod: allowed, no patch, one warning."""
    response = await materialise(url, pki, agent("80/TCP,http"))
    assert "patch" not in response
    assert response["warnings"] == [
        "hostport-extender: hostports.dev/listen is invalid, no port declared: "
        "'http': 'http' is not a port number"
    ]
    metrics = await get_metrics(url, pki)
    assert 'hostport_extender_listen_reviews_total{decision="invalid-annotation"} 1.0' in metrics


async def test_off_unless_enabled(pki: PKI, fake: FakeApiServer, tmp_path: Path) -> None:
    """Without --materialise-listeners the endpoint answers, and changes nothing."""
    async with serving(pki, lease_watch(fake, tmp_path)) as base:
        response = await materialise(base, pki, agent("80/TCP@169.254.170.23"))
        metrics = await get_metrics(base, pki)
    assert response == {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": True}
    assert 'hostport_extender_listen_reviews_total{decision="materialise-disabled"} 1.0' in metrics


async def test_declared_ports_are_counted(pki: PKI, url: str) -> None:
    """Each materialised pod and each declared port is counted."""
    await materialise(url, pki, agent("80/TCP@169.254.170.23,2703/TCP"))
    metrics = await get_metrics(url, pki)
    assert 'hostport_extender_listen_reviews_total{decision="materialised"} 1.0' in metrics
    assert "hostport_extender_listen_ports_declared_total 2.0" in metrics


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "body is not JSON"),
        (json.dumps(review(agent("80/TCP"), object=None)).encode(), "object is not a Pod"),
        (json.dumps({**review(agent("80/TCP")), "kind": "Pod"}).encode(), "is not AdmissionReview"),
    ],
    ids=["not json", "no object", "wrong kind"],
)
async def test_malformed_reviews_get_a_clear_400(
    pki: PKI, url: str, body: bytes, message: str
) -> None:
    """Malformed reviews get HTTP 400 with a one-line JSON error."""
    status, answer = await post(url, pki, body, "/materialise")
    assert status == 400
    assert message in answer["error"]
    assert "\n" not in answer["error"]
