"""filter_pod against a model: which candidates pass, and why the others do not, whichever way
the candidates are walked (searched for each of a few holders, or each looked up)."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core import decisions
from extender.core.cluster import Cluster
from extender.core.decisions import filter_pod
from extender.core.pods import decode_pod, in_flight_owner
from extender.settings import Settings
from tests.objects import pod, port

NODES = [f"node-{index}" for index in range(10)]
UNKNOWN = ["gone-1", "gone-2"]
"""Candidates the cluster does not know (a node deleted since the scheduler's snapshot)."""
ADDRESSES = (None, "10.0.0.1", "10.0.0.2")
NEW_POD_UID = "uid-new"

WALKS = {"searched per holder": 10_000, "looked up": 0}
"""FEW_HOLDERS for each way of walking the candidates (every query takes the one named)."""


@st.composite
def placements(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """Pods holding ports 80/81 on some nodes, a pod asking for some of them, its candidates."""
    running = []
    for index in range(draw(st.integers(0, 12))):
        host_port = draw(st.sampled_from((80, 81)))
        address = draw(st.sampled_from(ADDRESSES))
        mine = index == 0 and draw(st.booleans())  # the new pod itself, bound elsewhere
        running.append(
            pod(
                f"holder-{index}",
                uid=NEW_POD_UID if mine else None,
                node=draw(st.sampled_from(NODES)),
                ports=[port(8080, host_port, host_ip=address)],
                host_network=draw(st.booleans()),
            )
        )
    wanted = draw(st.lists(st.sampled_from((80, 81)), min_size=1, max_size=2, unique=True))
    address = draw(st.sampled_from(ADDRESSES))
    new = pod(
        "new",
        uid=NEW_POD_UID,
        ports=[port(9000 + p, p, host_ip=address) for p in wanted],
    )
    candidates = draw(st.permutations(NODES + UNKNOWN))
    return running, new, candidates[: draw(st.integers(0, len(candidates)))]


def cluster_of(running: list[dict[str, Any]]) -> Cluster:
    cluster = Cluster(Settings())
    cluster.pods.replace(running)
    return cluster


@pytest.mark.parametrize("few_holders", WALKS.values(), ids=WALKS.keys())
@settings(max_examples=300, deadline=None)
@given(placement=placements())
def test_filter_pod_rejects_exactly_the_candidates_holding_a_wanted_port(
    few_holders: int, placement: tuple[list[dict[str, Any]], dict[str, Any], list[str]]
) -> None:
    running, new, candidates = placement
    cluster = cluster_of(running)
    wanted = decode_pod(new, strict=True)
    ignore = (wanted.uid, in_flight_owner(wanted.uid))
    model = cluster.index.conflicts(wanted.wanted, set(candidates), ignore, exact=True)

    with mock.patch.object(decisions, "FEW_HOLDERS", few_holders):
        verdict = filter_pod(cluster, wanted, list(candidates))

    assert verdict.passed == [node for node in candidates if node not in model]
    assert verdict.rejected == {node: claim.reason for node, claim in model.items()}
    assert verdict.held == model


@pytest.mark.parametrize("few_holders", WALKS.values(), ids=WALKS.keys())
def test_a_node_named_twice_is_refused_both_times(few_holders: int) -> None:
    cluster = cluster_of([pod("ingress", node="node-1", ports=[port(80, 80)])])
    new = decode_pod(pod("web", ports=[port(8080, 80)]), strict=True)
    candidates = ["node-1", "node-2", "node-1", "node-3"]

    with mock.patch.object(decisions, "FEW_HOLDERS", few_holders):
        verdict = filter_pod(cluster, new, candidates)

    assert verdict.passed == ["node-2", "node-3"]
    assert set(verdict.rejected) == {"node-1"}


class CountedName(str):
    """A candidate name that counts how often it is hashed."""

    hashed = 0

    def __hash__(self) -> int:
        CountedName.hashed += 1
        return super().__hash__()


def test_a_few_holders_are_searched_for_without_hashing_every_candidate() -> None:
    cluster = cluster_of(
        [pod(f"ingress-{n}", node=f"node-{n}", ports=[port(80, 80)]) for n in (1, 2)]
    )
    new = decode_pod(pod("web", ports=[port(8080, 80)]), strict=True)
    candidates = [CountedName(f"node-{n}") for n in range(1000)]
    CountedName.hashed = 0

    verdict = filter_pod(cluster, new, candidates)

    assert set(verdict.rejected) == {"node-1", "node-2"}
    assert len(verdict.passed) == 998
    assert CountedName.hashed < 10  # the holders' names, not the 1,000 candidates
    with mock.patch.object(decisions, "FEW_HOLDERS", 1):
        CountedName.hashed = 0
        assert filter_pod(cluster, new, candidates).passed == verdict.passed
        assert CountedName.hashed >= 1000  # more holders than FEW_HOLDERS: each one looked up
