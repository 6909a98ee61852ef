"""The port index and the conflict rule: table-driven cases and a property test against a model."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.ports import (
    RANGE_EXPANSION_LIMIT,
    SPREAD_MAX_SCORE,
    Claim,
    ClaimKind,
    PortIndex,
)
from extender.core.portspec import WILDCARD


def claim(
    spec: str,
    ip: str = WILDCARD,
    *,
    owner: str = "held",
    kind: ClaimKind = ClaimKind.HOST_PORT,
    holder: str = "hostPort pod ns/held",
) -> Claim:
    ports, _, protocol = spec.partition("/")
    first, _, last = ports.partition("-")
    return Claim(protocol or "TCP", int(first), int(last or first), ip, kind, owner, holder)


@pytest.mark.parametrize(
    ("wanted", "held", "collides"),
    [
        (claim("80"), claim("80"), True),
        (claim("80/TCP"), claim("80/UDP"), False),
        (claim("80/UDP"), claim("80/UDP"), True),
        (claim("80/SCTP"), claim("80/TCP"), False),
        (claim("80"), claim("81"), False),
        (claim("80", "10.0.0.1"), claim("80"), True),  # specific vs wildcard
        (claim("80"), claim("80", "10.0.0.1"), True),  # wildcard vs specific
        (claim("80", "10.0.0.1"), claim("80", "10.0.0.2"), False),
        (claim("80", "169.254.170.23"), claim("80", "fd00:ec2::23"), False),
        (claim("80", "fd00:ec2::23"), claim("80", "fd00:ec2::23"), True),
        (claim("80", "10.0.0.1"), claim("80", "10.0.0.1"), True),
        (claim("30050"), claim("30000-30100"), True),  # inside a range
        (claim("29999"), claim("30000-30100"), False),
        (claim("30100-30200"), claim("30000-30100"), True),  # ranges touching at one port
        (claim("8125/UDP", "10.0.0.1"), claim("8125-8126/UDP", "10.0.0.2"), False),
    ],
)
def test_conflict_rule(wanted: Claim, held: Claim, collides: bool) -> None:
    """Same protocol, overlapping ports, overlapping addresses (equal or a wildcard)."""
    assert wanted.collides(held) is collides
    assert held.collides(wanted) is collides  # the rule is symmetric
    index = PortIndex()
    index.set_owner(held.owner, "n1", [held])
    assert (index.conflicts([wanted]) == {"n1": held}) is collides


def test_reason_names_port_protocol_address_and_holder() -> None:
    """The reason an operator reads says which port, on which address, held by whom."""
    held = claim(
        "80",
        "169.254.170.23",
        kind=ClaimKind.LISTEN,
        holder="hostNetwork pod kube-system/eks-pod-identity-agent-x7k2",
    )
    assert held.reason == (
        "80/TCP on 169.254.170.23 held by hostNetwork pod kube-system/eks-pod-identity-agent-x7k2"
    )
    assert claim("8125/UDP").reason.startswith("8125/UDP on every address held by")


def test_a_pod_never_conflicts_with_itself() -> None:
    """Claims of the owners passed in `ignore_owners` do not count."""
    index = PortIndex()
    index.set_owner("pod-a", "n1", [claim("80", owner="pod-a")])
    assert index.conflicts([claim("80", owner="pod-a")], ignore_owners={"pod-a"}) == {}
    assert "n1" in index.conflicts([claim("80", owner="pod-b")])


def test_candidates_limit_the_answer_both_ways() -> None:
    """Only candidate nodes are reported, whether few candidates or few holders."""
    index = PortIndex()
    for number in range(50):
        index.set_owner(f"p{number}", f"n{number}", [claim("80", owner=f"p{number}")])
    assert set(index.conflicts([claim("80")], candidates={"n1", "n2", "other"})) == {"n1", "n2"}
    everyone = {f"n{i}" for i in range(100)}
    assert set(index.conflicts([claim("80")], candidates=everyone)) == {f"n{i}" for i in range(50)}


def test_a_port_held_everywhere_names_each_nodes_first_claim() -> None:
    """A wildcard want over more candidates than holders (the filter's inexact scope) gets
    every holding node with the first claim held there, whichever owner is asked about."""
    index = PortIndex()
    for number in range(20):
        first = claim("8125/UDP", owner=f"ds-{number}", holder=f"hostNetwork pod ds/{number}")
        second = claim("8125/UDP", "10.0.0.1", owner=f"other-{number}")
        index.set_owner(f"ds-{number}", f"n{number}", [first])
        index.set_owner(f"other-{number}", f"n{number}", [second])
    candidates = [f"n{i}" for i in range(40)]
    found = index.conflicts([claim("8125/UDP", owner="new")], candidates, exact=False)
    assert sorted(found) == sorted(f"n{i}" for i in range(20))
    assert all(found[f"n{i}"].owner == f"ds-{i}" for i in range(20))
    # The pod's own claims still never count, through the slower path.
    mine = index.conflicts([claim("8125/UDP", owner="ds-3")], candidates, ("ds-3",), exact=False)
    assert mine["n3"].owner == "other-3"
    assert len(mine) == 20


def test_repeated_queries_see_every_write_in_between() -> None:
    """The answer for a port held everywhere follows each write: a new holder, a released one,
    an owner moved to another node or replaced by a claim on another port, and a caller
    changing the answer it got does not change the next one."""
    index = PortIndex()
    for number in range(10):
        index.set_owner(f"ds-{number}", f"n{number}", [claim("8125/UDP", owner=f"ds-{number}")])
    want = [claim("8125/UDP", owner="new")]
    candidates = [f"n{i}" for i in range(20)]
    first = index.conflicts(want, candidates, exact=False)
    assert sorted(first) == sorted(f"n{i}" for i in range(10))
    first.clear()
    assert len(index.conflicts(want, candidates, exact=False)) == 10
    index.set_owner("extra", "n15", [claim("8125/UDP", owner="extra")])
    index.remove_owner("ds-0")
    index.set_owner("ds-1", "n16", [claim("8125/UDP", owner="ds-1")])
    index.set_owner("ds-2", "n2", [claim("9000/UDP", owner="ds-2")])
    found = index.conflicts(want, candidates, exact=False)
    expected = {f"n{i}" for i in range(3, 10)} | {"n15", "n16"}
    assert set(found) == expected
    assert found["n16"].owner == "ds-1"
    assert set(index.conflicts([claim("9000/UDP", owner="new")], candidates, exact=False)) == {"n2"}


def test_replacing_and_removing_owners_releases_ports() -> None:
    """set_owner replaces an owner's claims whole; remove_owner releases them all."""
    index = PortIndex()
    index.set_owner("p", "n1", [claim("80", owner="p"), claim("443", owner="p")])
    index.set_owner("p", "n2", [claim("8080", owner="p")])
    assert index.conflicts([claim("80")]) == {}
    assert set(index.conflicts([claim("8080")])) == {"n2"}
    index.remove_owner("p")
    assert index.conflicts([claim("8080")]) == {}
    assert index.claim_count() == 0
    assert index.node_names() == []


def test_wide_ranges_are_kept_as_ranges_and_still_conflict() -> None:
    """A node reserving 30000-32767 costs one entry, and every port inside it conflicts."""
    index = PortIndex()
    wide = claim("30000-32767", owner="node:n1:reserved", kind=ClaimKind.NODE_RESERVED)
    index.set_owner(wide.owner, "n1", [wide])
    assert RANGE_EXPANSION_LIMIT <= 32767 - 30000
    assert index.conflicts([claim("31000")]) == {"n1": wide}
    assert index.conflicts([claim("29000-30000")]) == {"n1": wide}
    assert index.conflicts([claim("32768")]) == {}
    index.remove_owner(wide.owner)
    assert index.conflicts([claim("31000")]) == {}


def test_cluster_reserved_ports_block_every_candidate() -> None:
    """Cluster-wide reserved ports conflict on every node asked about."""
    reserved = claim("10250", owner="cluster:reserved", kind=ClaimKind.CLUSTER_RESERVED)
    index = PortIndex(cluster_reserved=[reserved])
    assert index.conflicts([claim("10250")], candidates=["a", "b"]) == {
        "a": reserved,
        "b": reserved,
    }
    assert index.conflicts([claim("10251")], candidates=["a"]) == {}


def test_conflicts_on_lists_every_pair_for_one_node() -> None:
    """conflicts_on reports each (wanted, held) pair, for preemption and `who`."""
    index = PortIndex()
    index.set_owner("a", "n1", [claim("80", owner="a")])
    index.set_owner("b", "n1", [claim("80", "10.0.0.1", owner="b")])
    pairs = index.conflicts_on("n1", [claim("80", owner="me")])
    assert {held.owner for _, held in pairs} == {"a", "b"}


def test_udp_owner_switch_is_remembered_for_the_window() -> None:
    """A UDP port moving between hostPort and hostNetwork marks the node risky for a while."""
    now = [1000.0]
    index = PortIndex(clock=lambda: now[0], udp_switch_window=600)
    dnat = claim("8125/UDP", owner="old", kind=ClaimKind.HOST_PORT)
    index.set_owner("old", "n1", [dnat])
    index.remove_owner("old")
    # A host-network pod now would meet the old DNAT conntrack entries.
    assert "n1" in index.udp_switch_risks([claim("8125/UDP")], family="socket")
    assert index.udp_switch_risks([claim("8125/UDP")], family="dnat") == {}
    sock = claim("8125/UDP", owner="new", kind=ClaimKind.HOST_NETWORK)
    index.set_owner("new", "n1", [sock])
    assert "changed owner" in index.udp_switch_risks([claim("8125/UDP")], family="dnat")["n1"]
    now[0] += 601
    assert index.udp_switch_risks([claim("8125/UDP")], family="dnat") == {}
    index.forget_udp_history()
    assert index.udp_switch_risks([claim("8125/UDP")], family="socket") == {}


# --- property test: the index against a brute-force model -------------------------------------

NODES = ["n1", "n2", "n3"]
IPS = [WILDCARD, "10.0.0.1", "10.0.0.2", "fd00::1"]
claims_strategy = st.builds(
    lambda proto, first, span, ip: (proto, first, first + span, ip),
    st.sampled_from(["TCP", "UDP"]),
    st.integers(1, 200),
    st.sampled_from([0, 0, 0, 3, RANGE_EXPANSION_LIMIT + 10]),
    st.sampled_from(IPS),
)
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("set"),
            st.sampled_from(["a", "b", "c", "d"]),
            st.sampled_from(NODES),
            st.lists(claims_strategy, max_size=3),
        ),
        st.tuples(st.just("remove"), st.sampled_from(["a", "b", "c", "d"])),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(
    operations,
    st.lists(claims_strategy, min_size=1, max_size=3),
    st.sets(st.sampled_from([*NODES, "n4"])) | st.none(),
    st.sampled_from(["a", "zz"]),
)
def test_index_matches_brute_force_model(
    ops: list[tuple[object, ...]],
    wanted_specs: list[tuple[str, int, int, str]],
    candidates: set[str] | None,
    me: str,
) -> None:
    """After any sequence of writes, conflicts() equals a naive scan of every live claim."""
    index = PortIndex()
    model: dict[str, tuple[str, list[Claim]]] = {}
    for op in ops:
        if op[0] == "set":
            _, owner, node, specs = op
            assert isinstance(owner, str)
            assert isinstance(node, str)
            assert isinstance(specs, list)
            claims = [
                Claim(p, f, la, ip, ClaimKind.HOST_PORT, owner, owner) for p, f, la, ip in specs
            ]
            index.set_owner(owner, node, claims)
            model[owner] = (node, claims)
            if not claims:
                del model[owner]
        else:
            assert isinstance(op[1], str)
            index.remove_owner(op[1])
            model.pop(op[1], None)
    wanted = [Claim(p, f, la, ip, ClaimKind.HOST_PORT, me, me) for p, f, la, ip in wanted_specs]
    found = index.conflicts(wanted, candidates, ignore_owners={me})
    expected_nodes = {
        node
        for owner, (node, claims) in model.items()
        if owner != me
        and (candidates is None or node in candidates)
        and any(w.collides(c) for w in wanted for c in claims)
    }
    assert set(found) == expected_nodes
    for node, held in found.items():
        assert held.owner != me
        assert model[held.owner][0] == node
        assert any(w.collides(held) for w in wanted)
    assert index.fingerprint() == {
        (owner, node, c.protocol, c.first, c.last, c.ip, c.kind.value)
        for owner, (node, claims) in model.items()
        for c in claims
    }


def brute_force_colliding(index: PortIndex, kinds: set[ClaimKind]) -> dict[str, set[Claim]]:
    """Every pair of claims on every node: the obvious, slow definition."""
    by_node: dict[str, list[Claim]] = {}
    for _owner, node, claims in index.owners():
        by_node.setdefault(node, []).extend(c for c in claims if c.kind is not ClaimKind.IN_FLIGHT)
    found: dict[str, set[Claim]] = {}
    for node, held in by_node.items():
        everything = [*held, *index.cluster_reserved]
        for claim in held:
            if claim.kind in kinds and any(
                o.owner != claim.owner and claim.collides(o) for o in everything
            ):
                found.setdefault(node, set()).add(claim)
    return found


KINDS = [ClaimKind.HOST_PORT, ClaimKind.HOST_NETWORK, ClaimKind.NODE_RESERVED, ClaimKind.IN_FLIGHT]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d", "e"]),
            st.sampled_from(NODES),
            st.lists(st.tuples(claims_strategy, st.sampled_from(KINDS)), max_size=3),
        ),
        max_size=12,
    ),
    st.lists(claims_strategy, max_size=2),
)
def test_colliding_claims_matches_every_pair(
    writes: list[tuple[str, str, list[tuple[tuple[str, int, int, str], ClaimKind]]]],
    reserved_specs: list[tuple[str, int, int, str]],
) -> None:
    """The per-port-table scan finds exactly the claims a pairwise comparison finds."""
    reserved = [
        Claim(p, f, la, ip, ClaimKind.CLUSTER_RESERVED, "cluster", "cluster")
        for p, f, la, ip in reserved_specs
    ]
    index = PortIndex(cluster_reserved=reserved)
    for owner, node, specs in writes:
        claims = [Claim(p, f, la, ip, kind, owner, owner) for (p, f, la, ip), kind in specs]
        index.set_owner(owner, node, claims)
    pod_kinds = {ClaimKind.HOST_PORT, ClaimKind.HOST_NETWORK}
    assert index.colliding_claims(pod_kinds, ignore=(ClaimKind.IN_FLIGHT,)) == (
        brute_force_colliding(index, pod_kinds)
    )


def test_compacting_keeps_the_spread_scores() -> None:
    """compact() re-allocates keys only: every node keeps its score and later writes still count."""
    index = PortIndex()
    for number in range(3):
        index.set_owner(f"p{number}", "n1", [claim(f"{80 + number}", owner=f"p{number}")])
    index.set_owner("q", "n2", [claim("80", owner="q")])
    before = dict(index.spread_scores)
    index.compact()
    assert index.spread_scores == before == {"n1": 7, "n2": 9}
    index.remove_owner("q")
    index.set_owner("r", "n1", [claim("90", owner="r")])
    assert index.spread_scores == {"n1": 6}


@given(
    writes=st.lists(
        st.tuples(st.sampled_from(["p1", "p2", "p3", "p4"]), st.sampled_from(["n1", "n2", "n3"])),
        max_size=12,
    )
)
def test_the_spread_memo_never_keeps_an_entry_past_its_nodes_score(
    writes: list[tuple[str, str]],
) -> None:
    """Whatever pods come and go, a memo entry made at a node's score is gone once the score
    is not that any more (the prioritize answer is built from these entries)."""
    index = PortIndex()
    made_at: dict[str, int] = {}

    def remember_every_node() -> None:
        for node in ("n1", "n2", "n3"):
            if node not in index.spread_memo:
                index.spread_memo[node] = b"entry"
                made_at[node] = index.spread_scores.get(node, SPREAD_MAX_SCORE)

    remember_every_node()
    for number, (owner, node) in enumerate(writes):
        if number % 3 == 2:
            index.remove_owner(owner)
        else:
            index.set_owner(owner, node, [claim(f"{80 + number}", owner=owner)])
        for kept in index.spread_memo:
            assert index.spread_scores.get(kept, SPREAD_MAX_SCORE) == made_at[kept]
        remember_every_node()


def test_many_claims_of_one_owner_on_one_port_cost_linear_time() -> None:
    """20,000 claims of one pod on port 80 (distinct addresses) go in and out in well under a
    second (claims x claims took minutes), and share the port with another owner correctly."""
    index = PortIndex()
    many = [claim("80", f"10.0.{i // 256}.{i % 256}", owner="pod") for i in range(20_000)]
    started = time.perf_counter()
    index.set_owner("pod", "n1", many)
    index.set_owner("other", "n1", [claim("80", "10.0.0.7", owner="other")])
    assert index.colliding_claims({ClaimKind.HOST_PORT})["n1"] == {
        many[7],
        claim("80", "10.0.0.7", owner="other"),
    }
    index.remove_owner("pod")
    assert time.perf_counter() - started < 1.0
    assert index.colliding_claims({ClaimKind.HOST_PORT}) == {}
    assert index.conflicts([claim("80", owner="new")]) == {
        "n1": claim("80", "10.0.0.7", owner="other")
    }


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(NODES),
            st.lists(claims_strategy, max_size=3),
        ),
        max_size=10,
    ),
    st.lists(claims_strategy, min_size=1, max_size=3),
    st.lists(claims_strategy, max_size=1),
)
def test_conflicts_on_matches_a_scan_of_the_node(
    writes: list[tuple[str, str, list[tuple[str, int, int, str]]]],
    wanted_specs: list[tuple[str, int, int, str]],
    reserved_specs: list[tuple[str, int, int, str]],
) -> None:
    """The table lookups find each colliding (wanted, held) pair on a node exactly once."""
    reserved = [
        Claim(p, f, la, ip, ClaimKind.CLUSTER_RESERVED, "cluster", "cluster")
        for p, f, la, ip in reserved_specs
    ]
    index = PortIndex(cluster_reserved=reserved)
    for owner, node, specs in writes:
        index.set_owner(
            owner,
            node,
            [Claim(p, f, la, ip, ClaimKind.HOST_PORT, owner, owner) for p, f, la, ip in specs],
        )
    wanted = [Claim(p, f, la, ip, ClaimKind.HOST_PORT, "me", "me") for p, f, la, ip in wanted_specs]
    for node in NODES:
        pairs = index.conflicts_on(node, wanted, ignore_owners={"b"})
        expected = [
            (want, held)
            for want in wanted
            for held in index.claims_on(node)
            if held.owner != "b" and want.collides(held)
        ]
        assert sorted(map(repr, pairs)) == sorted(map(repr, expected))
