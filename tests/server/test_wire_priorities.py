"""Every HostPriorityList, from the memo or not, is byte for byte what a list of dicts gives."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from extender.server import wire
from extender.server.wire import encode_priorities


def reference(hosts: list[str], scores: dict[str, int], default: int) -> bytes:
    """The plain encoding the scheduler's decoder was tested against."""
    return orjson.dumps([{"Host": h, "Score": scores.get(h, default)} for h in hosts])


node_names = st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,40}[a-z0-9])?", fullmatch=True)
any_names = st.one_of(
    node_names,
    st.text(max_size=12),  # quotes, backslashes, control characters, `","`, non-ASCII
    st.sampled_from(['","', '"', "\\", '\\","', "", "\u2028", "a],[b", '{"Host":"x"}']),
)
scores_in_range = st.integers(0, 10)


@given(
    hosts=st.lists(st.one_of(node_names, any_names), max_size=30),
    scored=st.dictionaries(any_names, st.one_of(scores_in_range, st.integers(-5, 500))),
    default=scores_in_range,
)
def test_every_host_list_encodes_exactly_as_the_plain_way(
    hosts: list[str], scored: dict[str, int], default: int
) -> None:
    scores = {**scored, **{h: len(h) % 11 for h in hosts[::2]}}
    assert encode_priorities(hosts, scores, default) == reference(hosts, scores, default)
    if default != 0:
        assert encode_priorities(hosts, {}, default) == reference(hosts, {}, default)


def test_a_cluster_of_node_names_decodes_to_each_hosts_score() -> None:
    """What the scheduler reads back: every host once, in order, with its own score."""
    hosts = [f"ip-10-0-{i // 250}-{i % 250}.ec2.internal" for i in range(1000)]
    scores = {h: i % 11 for i, h in enumerate(hosts) if i % 3}
    decoded = orjson.loads(encode_priorities(hosts, scores, 7))
    assert [entry["Host"] for entry in decoded] == hosts
    assert [entry["Score"] for entry in decoded] == [scores.get(h, 7) for h in hosts]
    assert orjson.loads(encode_priorities(["only"], {}, 10)) == [{"Host": "only", "Score": 10}]
    assert encode_priorities([], {"a": 1}, 10) == b"[]"


def test_no_opinion_is_an_empty_list_that_leaves_every_total_as_it_was() -> None:
    """Every host 0 (a pod without host-level claims): `[]`, not 5,000 entries to decode. The
    scheduler adds score * weight * 10 per listed host, so each total is what the list gave."""
    hosts = [f"node-{i}" for i in range(5000)]
    assert encode_priorities(hosts, {}, 0) == b"[]"
    full = reference(hosts, {}, 0)

    def added(answer: bytes) -> dict[str, int]:
        totals = dict.fromkeys(hosts, 0)
        for entry in orjson.loads(answer):
            totals[entry["Host"]] += entry["Score"] * 3 * 10
        return totals

    assert added(encode_priorities(hosts, {}, 0)) == added(full)
    # A pod with an opinion still lists every host, its 0s included.
    assert len(orjson.loads(encode_priorities(hosts, {"node-1": 0}, 10))) == 5000


@given(
    hosts=st.lists(any_names, max_size=30),
    scored=st.dictionaries(any_names, scores_in_range),
    default=scores_in_range,
    known=st.lists(any_names, max_size=10),
)
def test_answers_built_from_the_memo_are_byte_for_byte_the_plain_ones(
    hosts: list[str], scored: dict[str, int], default: int, known: list[str]
) -> None:
    """Whichever hosts the memo already holds (at their scores), the answer is exact, and the
    hosts it lacked are remembered for the next call."""
    if not scored and default == 0:
        scored = {"someone": 1}  # (no opinion is `[]` before the memo is looked at)
    memo = {h: orjson.dumps({"Host": h, "Score": scored.get(h, default)}) for h in known}
    assert encode_priorities(hosts, scored, default, memo) == reference(hosts, scored, default)
    assert set(hosts) <= set(memo)
    assert encode_priorities(hosts, scored, default, memo) == reference(hosts, scored, default)


def test_the_memo_starts_over_past_its_limit() -> None:
    """A client sending ever new names cannot make the memo grow without bound."""
    memo: dict[str, bytes] = {}
    for batch in range(3):
        hosts = [f"node-{batch}-{i}" for i in range(60_000)]
        assert orjson.loads(encode_priorities(hosts, {}, 10, memo))[-1] == {
            "Host": hosts[-1],
            "Score": 10,
        }
        assert len(memo) <= wire.MEMO_LIMIT
