"""Fixtures of the webhook tests: certificates, and a fake API server holding a fresh Lease."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from tests.fakeapi import FakeApiServer
from tests.pki import PKI, make_pki

LEASE_NS, LEASE_NAME = "hostport-system", "hostport-aware-scheduler"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def fake() -> AsyncIterator[FakeApiServer]:
    """The fake API server, holding a freshly renewed scheduler Lease."""
    server = FakeApiServer()
    await server.start()
    server.put_lease(LEASE_NS, LEASE_NAME, holder="sched-a_1f2e", renewed=datetime.now(UTC))
    yield server
    await server.stop()
