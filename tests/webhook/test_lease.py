"""The scheduler Lease: decoding what kube-scheduler's leader election writes, and the verdict."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest

from extender.core.routing import ALIVE, LEASE_MISSING, LEASE_STALE, LEASE_UNREADABLE
from extender.webhook.lease import LeaseRecord, decode_lease, liveness, parse_lease_name

# As `kubectl get lease -n hostport-system hostport-aware-scheduler -o json` shows it.
RAW_LEASE = {
    "apiVersion": "coordination.k8s.io/v1",
    "kind": "Lease",
    "metadata": {
        "name": "hostport-aware-scheduler",
        "namespace": "hostport-system",
        "resourceVersion": "48213",
    },
    "spec": {
        "acquireTime": "2026-12-01T08:00:00.000000Z",
        "holderIdentity": "hostport-aware-scheduler-6c9d7-x4k2m_7f1e2d3c-aaaa-bbbb-cccc",
        "leaseDurationSeconds": 15,
        "leaseTransitions": 3,
        "renewTime": "2026-12-01T09:30:12.345678Z",
    },
}


def test_decodes_what_leader_election_writes() -> None:
    """Holder, duration and the microsecond renewTime come through."""
    record = decode_lease(RAW_LEASE)
    assert record.status == "read"
    assert record.holder.startswith("hostport-aware-scheduler-6c9d7-x4k2m_")
    assert record.duration_seconds == 15
    assert record.renew_text == "2026-12-01T09:30:12.345678Z"
    assert (
        record.renew_time == datetime.fromisoformat("2026-12-01T09:30:12.345678+00:00").timestamp()
    )


FRESH = replace(decode_lease(RAW_LEASE), renewed_at=100.0)
VERDICTS = [
    ("renewed just now", FRESH, 100.0, ALIVE),
    ("at 2 x duration", FRESH, 130.0, ALIVE),
    ("past 2 x duration", FRESH, 130.5, LEASE_STALE),
    ("released: no holder", replace(FRESH, holder=""), 100.0, LEASE_STALE),
    ("no renewTime", replace(FRESH, renewed_at=None), 100.0, LEASE_STALE),
    ("no duration", replace(FRESH, duration_seconds=0), 100.0, LEASE_STALE),
    ("no spec", decode_lease({"kind": "Lease"}), 100.0, LEASE_STALE),
    ("garbage renewTime", decode_lease({"spec": {"renewTime": "soon"}}), 100.0, LEASE_STALE),
    ("404", LeaseRecord("missing"), 100.0, LEASE_MISSING),
    ("403 or unreachable", LeaseRecord("unreadable"), 100.0, LEASE_UNREADABLE),
]


@pytest.mark.parametrize(
    ("record", "now", "verdict"), [v[1:] for v in VERDICTS], ids=[v[0] for v in VERDICTS]
)
def test_verdict(record: LeaseRecord, now: float, verdict: str) -> None:
    """Alive only with a holder, a duration and a renewal within 2 x leaseDurationSeconds."""
    assert liveness(record, now) == verdict


@pytest.mark.parametrize("text", ["lease", "/name", "ns/", "a/b/c"])
def test_lease_name_must_be_namespace_slash_name(text: str) -> None:
    """--scheduler-lease takes NAMESPACE/NAME and says so otherwise."""
    with pytest.raises(ValueError, match="want NAMESPACE/NAME"):
        parse_lease_name(text)
