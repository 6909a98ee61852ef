"""Which nodes a pod may be placed on at all, before ports: nodeSelector, required node affinity,
taints and tolerations. Pure.

An approximation of the scheduler's NodeName, NodeAffinity, NodeUnschedulable and TaintToleration
plugins, good enough for a preflight: resources, pod (anti-)affinity, topology spread, volumes
and preferred terms are not considered. DaemonSet pods get the tolerations the DaemonSet
controller adds to every pod it creates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from extender.core.sinks import RawObject
from extender.errors import ExtenderError

BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
OPERATORS = frozenset({"In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"})


class PlacementError(ExtenderError):
    """A pod spec whose selector, affinity or tolerations have the wrong shape."""


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str
    effect: str

    def __str__(self) -> str:
        return (
            f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"
        )


@dataclass(frozen=True, slots=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.operator == "Exists":
            return not self.key or self.key == taint.key
        return self.key == taint.key and self.value == taint.value


def _daemon_tolerations(host_network: bool) -> tuple[Toleration, ...]:
    """What the DaemonSet controller adds to its pods (pkg/controller/daemon/util)."""
    added = [
        Toleration("node.kubernetes.io/not-ready", "Exists", "", "NoExecute"),
        Toleration("node.kubernetes.io/unreachable", "Exists", "", "NoExecute"),
        Toleration("node.kubernetes.io/disk-pressure", "Exists", "", "NoSchedule"),
        Toleration("node.kubernetes.io/memory-pressure", "Exists", "", "NoSchedule"),
        Toleration("node.kubernetes.io/pid-pressure", "Exists", "", "NoSchedule"),
        Toleration("node.kubernetes.io/unschedulable", "Exists", "", "NoSchedule"),
    ]
    if host_network:
        added.append(
            Toleration("node.kubernetes.io/network-unavailable", "Exists", "", "NoSchedule")
        )
    return tuple(added)


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What placement needs of a Node: its name, labels, taints, and whether it is cordoned."""

    name: str
    labels: Mapping[str, str]
    taints: tuple[Taint, ...]
    unschedulable: bool = False


def node_facts(raw_node: RawObject) -> NodeFacts:
    """Read leniently: a node's malformed field is ignored, it cannot be the operator's typo."""
    metadata = _lenient_mapping(raw_node.get("metadata"))
    spec = _lenient_mapping(raw_node.get("spec"))
    raw_labels = metadata.get("labels")
    labels = (
        {str(k): str(v) for k, v in raw_labels.items()} if isinstance(raw_labels, Mapping) else {}
    )
    taints = tuple(
        Taint(str(t.get("key", "")), str(t.get("value") or ""), str(t.get("effect", "")))
        for t in spec.get("taints") or ()
        if isinstance(t, Mapping)
    )
    return NodeFacts(
        str(metadata.get("name", "")), labels, taints, spec.get("unschedulable") is True
    )


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...]
    field: bool = False
    """A matchFields requirement (only `metadata.name` exists), not a label one."""

    def __str__(self) -> str:
        if self.operator in ("Exists", "DoesNotExist"):
            return f"{self.key} {self.operator}"
        return f"{self.key} {self.operator} [{', '.join(self.values)}]"

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key, "")
        if self.operator == "In":
            return present and value in self.values
        if self.operator == "NotIn":
            return not present or value not in self.values
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        if not present or not _is_integer(value):
            return False  # Gt/Lt on a missing or non-integer label never matches
        bound = int(self.values[0])
        return int(value) > bound if self.operator == "Gt" else int(value) < bound


def _is_integer(text: str) -> bool:
    return text.lstrip("-").isdigit()


@dataclass(frozen=True, slots=True)
class Constraints:
    """Where a pod may go, parsed from its spec once; `reason(node)` says why not, or None."""

    node_name: str
    node_selector: Mapping[str, str]
    terms: tuple[tuple[Requirement, ...], ...] | None
    """Required node affinity: any term must match, all requirements of a term. None: no rule."""
    tolerations: tuple[Toleration, ...]

    def reason(self, node: NodeFacts) -> str | None:
        """Why the pod cannot be placed on `node` regardless of ports; None if it can."""
        if self.node_name:
            # A pod with nodeName set skips the scheduler: the kubelet takes it as it is.
            return None if node.name == self.node_name else f"spec.nodeName is {self.node_name}"
        for key, value in self.node_selector.items():
            if node.labels.get(key) != value:
                has = node.labels.get(key)
                found = f"{key}={has}" if has is not None else f"no label {key}"
                return f"nodeSelector {key}={value} does not match ({found})"
        if self.terms is not None and not any(self._term_matches(t, node) for t in self.terms):
            failing = self._first_failure(node)
            return f"required node affinity does not match ({failing})"
        for taint in node.taints:
            if taint.effect in BLOCKING_EFFECTS and not any(
                toleration.tolerates(taint) for toleration in self.tolerations
            ):
                return f"taint {taint} is not tolerated"
        return None

    @staticmethod
    def _term_matches(term: tuple[Requirement, ...], node: NodeFacts) -> bool:
        if not term:
            return False  # an empty term matches no node (the API's rule)
        fields = {"metadata.name": node.name}
        return all(r.matches(fields if r.field else node.labels) for r in term)

    def _first_failure(self, node: NodeFacts) -> str:
        fields = {"metadata.name": node.name}
        for term in self.terms or ():
            for requirement in term:
                if not requirement.matches(fields if requirement.field else node.labels):
                    return str(requirement)
        return "no usable term"


def constraints_of(raw_spec: Mapping[str, Any], *, daemonset: bool) -> Constraints:
    """Parse a pod spec's placement rules strictly: a malformed one raises PlacementError."""
    node_name = raw_spec.get("nodeName") or ""
    if not isinstance(node_name, str):
        raise PlacementError("spec.nodeName must be a string")
    raw_selector = _mapping(raw_spec.get("nodeSelector"), "spec.nodeSelector")
    selector = {str(k): _scalar(v, f"spec.nodeSelector.{k}") for k, v in raw_selector.items()}
    affinity = _mapping(raw_spec.get("affinity"), "spec.affinity")
    node_affinity = _mapping(affinity.get("nodeAffinity"), "spec.affinity.nodeAffinity")
    required_path = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    terms: tuple[tuple[Requirement, ...], ...] | None = None
    if required is not None:
        raw_terms = _sequence(
            _mapping(required, required_path).get("nodeSelectorTerms"),
            f"{required_path}.nodeSelectorTerms",
        )
        terms = tuple(
            _term(raw_term, f"{required_path}.nodeSelectorTerms[{index}]")
            for index, raw_term in enumerate(raw_terms)
        )
    tolerations = tuple(
        _toleration(raw, f"spec.tolerations[{index}]")
        for index, raw in enumerate(_sequence(raw_spec.get("tolerations"), "spec.tolerations"))
    )
    if daemonset:
        tolerations += _daemon_tolerations(raw_spec.get("hostNetwork") is True)
    return Constraints(node_name, selector, terms, tolerations)


def _term(raw_term: object, where: str) -> tuple[Requirement, ...]:
    term = _mapping(raw_term, where)
    requirements = [
        _requirement(raw, f"{where}.matchExpressions[{index}]", field=False)
        for index, raw in enumerate(
            _sequence(term.get("matchExpressions"), f"{where}.matchExpressions")
        )
    ]
    requirements += [
        _requirement(raw, f"{where}.matchFields[{index}]", field=True)
        for index, raw in enumerate(_sequence(term.get("matchFields"), f"{where}.matchFields"))
    ]
    return tuple(requirements)


def _requirement(raw: object, where: str, *, field: bool) -> Requirement:
    expression = _mapping(raw, where)
    key, operator = expression.get("key"), expression.get("operator")
    if not isinstance(key, str) or not key:
        raise PlacementError(f"{where}.key must be a non-empty string")
    if operator not in OPERATORS:
        raise PlacementError(
            f"{where}.operator {operator!r} is not one of {', '.join(sorted(OPERATORS))}"
        )
    values = tuple(
        _scalar(v, f"{where}.values")
        for v in _sequence(expression.get("values"), f"{where}.values")
    )
    if operator in ("In", "NotIn") and not values:
        raise PlacementError(f"{where}: operator {operator} needs values")
    if operator in ("Exists", "DoesNotExist") and values:
        raise PlacementError(f"{where}: operator {operator} takes no values")
    if operator in ("Gt", "Lt") and (len(values) != 1 or not _is_integer(values[0])):
        raise PlacementError(f"{where}: operator {operator} needs exactly one integer value")
    return Requirement(key, str(operator), values, field)


def _toleration(raw: object, where: str) -> Toleration:
    toleration = _mapping(raw, where)
    operator = toleration.get("operator") or "Equal"
    if operator not in ("Equal", "Exists"):
        raise PlacementError(f"{where}.operator {operator!r} is not Equal or Exists")
    return Toleration(
        _scalar(toleration.get("key") or "", f"{where}.key"),
        str(operator),
        _scalar(toleration.get("value") or "", f"{where}.value"),
        _scalar(toleration.get("effect") or "", f"{where}.effect"),
    )


def label_selector_matches(raw_selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A workload's `spec.selector` (matchLabels and matchExpressions) against pod labels.

    An empty selector matches nothing here: the tools use it to find a workload's own pods, and
    guessing "every pod in the namespace" would hide real conflicts.
    """
    match_labels = _mapping(raw_selector.get("matchLabels"), "spec.selector.matchLabels")
    expressions = [
        _requirement(raw, f"spec.selector.matchExpressions[{index}]", field=False)
        for index, raw in enumerate(
            _sequence(raw_selector.get("matchExpressions"), "spec.selector.matchExpressions")
        )
    ]
    if not match_labels and not expressions:
        return False
    return all(labels.get(str(k)) == str(v) for k, v in match_labels.items()) and all(
        requirement.matches(labels) for requirement in expressions
    )


def _lenient_mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PlacementError(f"{where} must be an object")
    return value


def _sequence(value: object, where: str) -> Sequence[Any]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise PlacementError(f"{where} must be a list")
    return value


def _scalar(value: object, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PlacementError(f"{where} must be a string")
    return str(value)
