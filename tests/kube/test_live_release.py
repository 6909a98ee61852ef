"""Live mode end to end: a pod's tentative reservation ends when the watch (real informer, fake
API server) shows the scheduler gave up on it, it was deleted, or it was bound elsewhere."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakeapi import eventually
from tests.kube.test_live import LiveStack, filter_args, newcomer, start_stack


@pytest.fixture
async def live(tmp_path: Path, aiohttp_client: Any) -> AsyncIterator[LiveStack]:
    """A synced live extender (fail closed), as in test_live."""
    async with start_stack(tmp_path, aiohttp_client) as running:
        await eventually(lambda: running.live.readiness.check() is None)
        await eventually(lambda: running.fake.open_watches == 2)
        yield running


def gave_up(stack: LiveStack) -> None:
    """What the scheduler writes when a later step of the cycle fails: PodScheduled=False."""
    raw = stack.fake.get("pods", "default/newcomer")
    raw["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "SchedulerError",
            "message": "running PreBind plugin VolumeBinding: binding volumes: timed out",
        }
    ]
    stack.fake.put("pods", raw)


def bound_elsewhere(stack: LiveStack) -> None:
    """Another scheduler (or a user) bound the pod to n2."""
    raw = stack.fake.get("pods", "default/newcomer")
    raw["spec"]["nodeName"] = "n2"
    stack.fake.put("pods", raw)


def deleted(stack: LiveStack) -> None:
    stack.fake.remove("pods", "default/newcomer")


@pytest.mark.parametrize("signal", [gave_up, bound_elsewhere, deleted])
async def test_the_watch_ends_a_tentative_reservation(live: LiveStack, signal: object) -> None:
    """A passed n2 and n3, so a rival wanting port 80 is refused there; after the watch shows
    the signal, the reservation is gone and the rival passes wherever A does not hold 80."""
    stack = live
    stored = stack.fake.put("pods", newcomer())
    uid = stored["metadata"]["uid"]
    await eventually(lambda: stack.cluster.pods_by_uid.get(uid) is not None)
    answer = await stack.post("filter", filter_args(stored, ["n1", "n2", "n3"]))
    assert answer["NodeNames"] == ["n2", "n3"]
    rival = newcomer("rival")
    answer = await stack.post("filter", filter_args(rival, ["n2", "n3"]))
    assert answer["NodeNames"] == []
    assert "in flight" in answer["FailedAndUnresolvableNodes"]["n3"]

    assert callable(signal)
    signal(stack)
    await eventually(lambda: stack.cluster.in_flight.get(uid) is None)
    answer = await stack.post("filter", filter_args(rival, ["n2", "n3"]))
    assert answer["NodeNames"] == (["n3"] if signal is bound_elsewhere else ["n2", "n3"])
    assert stack.in_sync()
