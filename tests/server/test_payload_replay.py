"""Replay every call a real kube-scheduler v1.36 made (../shared/payloads) against our server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from extender.core.pods import decode_pod
from tests.conftest import PAYLOADS, MakeExtender
from tests.objects import node

FOLDERS = sorted(p for p in PAYLOADS.iterdir() if p.is_dir()) if PAYLOADS.is_dir() else []


def captured_calls(folder: Path) -> list[dict[str, Any]]:
    calls = [json.loads(path.read_text()) for path in folder.glob("*.json")]
    return sorted(calls, key=lambda call: call["seq"])


def test_payloads_are_present() -> None:
    """The captured payloads must be beside the checkout: without them this suite proves less."""
    assert {f.name for f in FOLDERS} >= {"ncc-true", "ncc-false", "variant-camel"}


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
async def test_replay_in_capture_order(folder: Path, make_extender: MakeExtender) -> None:
    """Each captured request gets a 200 answer of exactly the shape the scheduler decodes, and
    the bindings build up the cluster the later calls see."""
    client, cluster = await make_extender([node("node-1"), node("node-2"), node("node-3")])
    proposed_victims: dict[str, list[str]] = {}
    evicted: set[str] = set()
    scored_answers = empty_answers = 0
    for call in captured_calls(folder):
        request = call["request"]
        if (
            call["verb"] == "filter"
            and proposed_victims
            and len(request["NodeNames"] or request["Nodes"]["items"]) == 1
        ):
            # After preemption the scheduler evicts the victims on the nominated node and filters
            # the preemptor there alone; the watch would report the evictions, so apply them.
            nominated = (
                request["NodeNames"] or [n["metadata"]["name"] for n in request["Nodes"]["items"]]
            )[0]
            for uid in proposed_victims.pop(nominated, []):
                cluster.remove_pod(uid)
                evicted.add(uid)
        if call["verb"] == "preempt":
            meta = request["NodeNameToMetaVictims"] or {}
            full = request["NodeNameToVictims"] or {}
            proposed_victims = {n: [p["UID"] for p in v["Pods"]] for n, v in meta.items()}
            proposed_victims |= {
                n: [p["metadata"]["uid"] for p in v["Pods"]] for n, v in full.items()
            }
        response = await client.post(
            call["path"],
            data=json.dumps(call["request"]),
            headers={"Content-Type": "application/json"},
        )
        assert response.status == 200, (call["verb"], call["seq"], await response.text())
        assert response.content_type == "application/json"
        answer = await response.json()
        if call["verb"] == "filter":
            assert set(answer) >= {"FailedNodes", "FailedAndUnresolvableNodes", "Error"}
            assert answer["Error"] == ""
            if request["NodeNames"] is not None:
                assert set(answer["NodeNames"]) <= set(request["NodeNames"])
                passed = set(answer["NodeNames"])
                asked = set(request["NodeNames"])
            else:
                items = answer["Nodes"]["items"]
                asked = {n["metadata"]["name"] for n in request["Nodes"]["items"]}
                passed = {n["metadata"]["name"] for n in items}
                assert passed <= asked
                # Node objects come back untouched.
                originals = {n["metadata"]["name"]: n for n in request["Nodes"]["items"]}
                assert all(originals[n["metadata"]["name"]] == n for n in items)
            # Every rejected node is explained; every explained node was asked about.
            assert set(answer["FailedAndUnresolvableNodes"]) == asked - passed
        elif call["verb"] == "prioritize":
            hosts = request["NodeNames"] or [
                n["metadata"]["name"] for n in request["Nodes"]["items"]
            ]
            pod_claims = decode_pod(request["Pod"]).wanted
            # Every host in order when the pod has claims to score; none when it has none
            # (score 0 everywhere: the scheduler adds nothing either way).
            assert [entry["Host"] for entry in answer] == (hosts if pod_claims else [])
            assert all(set(e) == {"Host", "Score"} and 0 <= e["Score"] <= 10 for e in answer)
            scored_answers += bool(answer)
            empty_answers += not answer
        elif call["verb"] == "bind":
            assert answer == {"Error": ""}
        elif call["verb"] == "preempt":
            assert set(answer) == {"NodeNameToMetaVictims"}
            proposed = request["NodeNameToMetaVictims"] or request["NodeNameToVictims"]
            for name, victims in answer["NodeNameToMetaVictims"].items():
                assert set(victims) == {"Pods", "NumPDBViolations"}
                proposed_uids = [
                    p.get("UID") or p["metadata"]["uid"] for p in proposed[name]["Pods"]
                ]
                assert [p["UID"] for p in victims["Pods"]] == proposed_uids
    if folder.name.startswith("ncc-"):
        # Those captures prioritize pods with host ports and pods without: both answers seen.
        assert scored_answers > 0
        assert empty_answers > 0
    # The bindings were applied: every host-port pod the scheduler bound (and did not evict)
    # holds its port.
    bound = {owner for owner, _, _ in cluster.index.owners()}
    for call in captured_calls(folder):
        if call["verb"] == "filter":
            pod = call["request"]["Pod"]
            spec = pod["spec"]
            has_ports = any(
                p.get("hostPort") for c in spec["containers"] for p in c.get("ports", [])
            )
            was_bound = any(
                b["verb"] == "bind" and b["request"]["PodUID"] == pod["metadata"]["uid"]
                for b in captured_calls(folder)
            )
            if has_ports and was_bound and pod["metadata"]["uid"] not in evicted:
                assert pod["metadata"]["uid"] in bound


async def test_preemption_keeps_nodes_where_victims_free_the_port(
    make_extender: MakeExtender,
) -> None:
    """The captured preemption: victims on every node hold 31000/TCP; evicting them frees it."""
    client, _ = await make_extender([node("node-1"), node("node-2"), node("node-3")])
    calls = captured_calls(PAYLOADS / "ncc-true")
    for call in calls:
        if call["verb"] == "preempt":
            break
        await client.post(call["path"], data=json.dumps(call["request"]))
    response = await client.post("/preempt", data=json.dumps(call["request"]))
    answer = await response.json()
    assert answer == {"NodeNameToMetaVictims": call["request"]["NodeNameToMetaVictims"]}
    # Had the scheduler proposed no victims on node-1, the port there would stay blocked.
    request = dict(call["request"])
    request["NodeNameToMetaVictims"] = dict(request["NodeNameToMetaVictims"])
    request["NodeNameToMetaVictims"]["node-1"] = {"Pods": [], "NumPDBViolations": 0}
    answer = await (await client.post("/preempt", data=json.dumps(request))).json()
    assert "node-1" not in answer["NodeNameToMetaVictims"]
    assert set(answer["NodeNameToMetaVictims"]) == {"node-2", "node-3"}
