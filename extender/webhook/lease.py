"""Is the hostport-aware scheduler alive? Its leader-election Lease, read in the background.

Routing a pod to a scheduler that is not running leaves it Pending; routing the pods that
scheduler depends on deadlocks the cluster (the VPC CNI story). So the webhook routes only while
the scheduler's Lease (`coordination.k8s.io/v1`, written by kube-scheduler's leader election
every `retryPeriod`, 2 s by default) shows a holder and a `renewTime` within two lease durations
of now. Anything else (no Lease, a Lease we may not read, an API server we cannot reach, a
released or expired Lease) means "not alive": pods are left to the default scheduler.

The admission path never waits on the API: `LeaseWatch` re-reads the Lease every few seconds and
keeps the last answer; `liveness()` only compares timestamps. A failed read replaces the cached
answer at once (fail safe: after an error we do not route on old news).

`renewTime` is written with the leader's clock, not ours. As client-go's leader election does,
freshness is judged on our own monotonic clock from when we saw `renewTime` change (no later
than the read before the change: conservative), so clock skew between the scheduler's node and
the webhook's does not matter; only the very first read, which cannot have seen a change,
estimates the Lease's age from the two wall clocks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from extender.core.routing import ALIVE, LEASE_MISSING, LEASE_STALE, LEASE_UNREADABLE
from extender.errors import ExtenderError

if TYPE_CHECKING:
    from extender.kube.kubeapi import KubeApi

log = logging.getLogger(__name__)

DEFAULT_LEASE = ("hostport-system", "hostport-aware-scheduler")
DEFAULT_POLL_SECONDS = 5.0
"""Added to the 2 x leaseDuration window (30 s with kube-scheduler's defaults) at worst."""
FRESH_DURATIONS = 2
"""A Lease is fresh while renewTime is at most this many leaseDurationSeconds old."""


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What the last read of the Lease said: `status` is "read", "missing" or "unreadable"."""

    status: str
    holder: str = ""
    renew_time: float | None = None
    """Seconds since the epoch, from `spec.renewTime` (the leader's clock, not ours)."""
    duration_seconds: int = 0
    detail: str = ""
    """Why it is missing or unreadable, for the log."""
    renew_text: str = ""
    """`spec.renewTime` as written: a different text is a renewal."""
    renewed_at: float | None = None
    """Our monotonic time by which that renewal had happened (set by LeaseWatch)."""


UNKNOWN = LeaseRecord("unreadable", detail="not read yet")


def decode_lease(raw_lease: Mapping[str, Any]) -> LeaseRecord:
    """A Lease object -> its record; a Lease without a usable spec counts as stale, not alive."""
    spec = raw_lease.get("spec")
    if not isinstance(spec, Mapping):
        return LeaseRecord("read", detail="the Lease has no spec")
    holder = spec.get("holderIdentity")
    duration = spec.get("leaseDurationSeconds")
    renew_text = spec.get("renewTime")
    renew_time: float | None = None
    if isinstance(renew_text, str):
        try:
            renew_time = datetime.fromisoformat(renew_text).timestamp()
        except ValueError:
            renew_time = None
    return LeaseRecord(
        "read",
        holder=holder if isinstance(holder, str) else "",
        renew_time=renew_time,
        duration_seconds=duration if isinstance(duration, int) and duration > 0 else 0,
        renew_text=renew_text if isinstance(renew_text, str) else "",
    )


def liveness(record: LeaseRecord, now: float) -> str:
    """ALIVE, or which way the scheduler is not: missing, unreadable or stale Lease.

    `now` is on the clock `record.renewed_at` was set with (LeaseWatch: monotonic).
    """
    if record.status == "missing":
        return LEASE_MISSING
    if record.status != "read":
        return LEASE_UNREADABLE
    if not record.holder or record.renewed_at is None or record.duration_seconds <= 0:
        return LEASE_STALE
    if now - record.renewed_at > FRESH_DURATIONS * record.duration_seconds:
        return LEASE_STALE
    return ALIVE


def parse_lease_name(text: str) -> tuple[str, str]:
    """NAMESPACE/NAME; ValueError naming the flag when it is not that."""
    namespace, slash, name = text.partition("/")
    if not slash or not namespace or not name or "/" in name:
        raise ValueError(f"--scheduler-lease {text!r}: want NAMESPACE/NAME")
    return namespace, name


class LeaseWatchError(ExtenderError):
    """The Lease watch was used before it was started."""


class LeaseWatch:
    """The cached record of one Lease, refreshed by `run()`; read with `verdict()`."""

    def __init__(
        self,
        api: KubeApi | None,
        namespace: str,
        name: str,
        *,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.wall_clock = wall_clock
        self.record = UNKNOWN
        self.reads = 0
        self._last_read_at: float | None = None
        self._last_verdict = ""
        self.path = (
            f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace, safe='')}"
            f"/leases/{quote(name, safe='')}"
        )

    def verdict(self) -> str:
        """The current liveness verdict: no I/O, safe on the admission path."""
        return liveness(self.record, self.clock())

    def age_seconds(self) -> float | None:
        """Seconds since the Lease's last renewal, at most (None when there is none)."""
        if self.record.renewed_at is None:
            return None
        return max(0.0, self.clock() - self.record.renewed_at)

    async def refresh(self) -> LeaseRecord:
        """Read the Lease once and cache what it says (never raises for API trouble)."""
        if self.api is None:
            raise LeaseWatchError("LeaseWatch has no API client")
        # Here, not at the top: every subcommand imports this module, and the API client pulls
        # in `kubernetes`, which `agent --once` must not load.
        from extender.kube.kubeapi import ApiStatusError, KubeApiError  # noqa: PLC0415

        try:
            raw_lease = await self.api.get(self.path)
        except ApiStatusError as error:
            status = "missing" if error.status == 404 else "unreadable"
            self.record = LeaseRecord(status, detail=str(error))
        except KubeApiError as error:
            self.record = LeaseRecord("unreadable", detail=str(error))
        else:
            self.record = self._with_renewal(decode_lease(raw_lease))
        self._last_read_at = self.clock()
        self.reads += 1
        self._log_change()
        return self.record

    def _with_renewal(self, record: LeaseRecord) -> LeaseRecord:
        """`record` with `renewed_at`: kept while renewTime stays, else when we saw it move."""
        previous = self.record
        if record.renew_time is None:
            return record
        if (
            previous.status == "read"
            and previous.renew_text == record.renew_text
            and previous.holder == record.holder
        ):
            renewed_at = previous.renewed_at
        elif previous.status == "read" and self._last_read_at is not None:
            # Renewed since the last read: no earlier than that read, whatever the clocks say.
            renewed_at = self._last_read_at
        else:
            # First sight: all we have is the leader's wall clock against ours.
            age = max(0.0, self.wall_clock() - record.renew_time)
            renewed_at = self.clock() - age
        return replace(record, renewed_at=renewed_at)

    async def run(self) -> None:
        """Refresh every `poll_seconds` until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(self.poll_seconds)

    def _log_change(self) -> None:
        verdict = self.verdict()
        if verdict == self._last_verdict:
            return
        self._last_verdict = verdict
        where = f"{self.namespace}/{self.name}"
        if verdict == ALIVE:
            log.info("scheduler lease %s is fresh (holder %s): routing", where, self.record.holder)
        else:
            age = self.age_seconds()
            detail = self.record.detail or (
                f"renewed {age:.0f} s ago" if age is not None else "no renewTime"
            )
            log.warning("scheduler lease %s: %s (%s): not routing", where, verdict, detail)
