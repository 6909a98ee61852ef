"""The kustomize trees render, and what they render agrees with the code it deploys.

Every overlay is rendered with the real `kubectl kustomize`; the extender's and the webhook's
container arguments are parsed by the real command line; the scheduler configuration is checked
against the fields of the upstream `Extender` type; the webhook's CEL match conditions are
evaluated with a CEL interpreter against the same pods as the webhook's own decision tests.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import kubernetes.client
import pytest
import yaml
from celpy.adapter import json_to_cel

from extender import cli
from extender.core.cluster import Cluster
from extender.core.pods import decode_node
from extender.core.portspec import parse_port_specs
from extender.core.routing import (
    DEFAULT_BOOTSTRAP_DAEMONSETS,
    DEFAULT_BOOTSTRAP_LABELS,
    DEFAULT_EXCLUDED_NAMESPACES,
    ROUTED,
    ROUTED_SCHEDULER,
    SELF_LABEL,
    RoutingPolicy,
)
from extender.core.routing import route_decision as webhook_decision
from extender.server.app import VERBS, create_app
from extender.server.binding import SnapshotBinder
from extender.server.metrics import new_metrics
from extender.server.readiness import AlwaysReady
from extender.settings import Settings
from extender.webhook.app import create_webhook_app
from extender.webhook.command import guard_from_args, policy_from_args
from extender.webhook.guard import DENIALS, NOT_A_POD_DELETE, NOT_A_SCHEDULER, GuardPolicy
from extender.webhook.lease import LeaseWatch
from tests.core.test_listeners import CASES as LISTEN_CASES
from tests.webhook.test_guard import GUARD_CASES
from tests.webhook.test_webhook import CASES

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
OVERLAYS = ("default", "kubeadm", "cert-manager", "monitoring")
NAMESPACE = "hostport-system"

# kubescheduler.config.k8s.io/v1 Extender and its tlsConfig (../shared/protocol.md §2.1).
EXTENDER_FIELDS = {
    "urlPrefix": str,
    "filterVerb": str,
    "preemptVerb": str,
    "prioritizeVerb": str,
    "weight": int,
    "bindVerb": str,
    "enableHTTPS": bool,
    "tlsConfig": dict,
    "httpTimeout": str,
    "nodeCacheCapable": bool,
    "managedResources": list,
    "ignorable": bool,
}
TLS_CONFIG_FIELDS = {
    "insecure",
    "serverName",
    "certFile",
    "keyFile",
    "caFile",
    "certData",
    "keyData",
    "caData",
}
RawObject = dict[str, Any]


def render(overlay: str) -> list[RawObject]:
    """`kubectl kustomize config/<overlay>`, parsed; fails loudly when kubectl is missing."""
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl is needed to render the kustomize trees"
    result = subprocess.run(
        [kubectl, "kustomize", str(CONFIG / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[RawObject]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


def find(objects: list[RawObject], kind: str, name: str | None = None) -> RawObject:
    matches = [
        o
        for o in objects
        if o["kind"] == kind and (name is None or o["metadata"]["name"].startswith(name))
    ]
    assert len(matches) == 1, f"want one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def named(objects: list[RawObject], kind: str, name: str) -> RawObject:
    """The one object of `kind` called exactly `name`."""
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def container(pod_spec: RawObject, name: str) -> RawObject:
    (found,) = [c for c in pod_spec["containers"] if c["name"] == name]
    assert isinstance(found, dict)
    return found


def scheduler_config(objects: list[RawObject], configmap: str) -> RawObject:
    data = find(objects, "ConfigMap", configmap)["data"]
    (text,) = data.values()
    loaded: RawObject = yaml.safe_load(text)
    return loaded


def parse_cli(args: list[str]) -> argparse.Namespace:
    """The container's arguments through the real `hostport-extender` parser."""
    return cli.build_parser().parse_args(args)


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def named_port(spec: RawObject, name: str) -> int:
    for item in spec["ports"]:
        if item["name"] == name:
            port: int = item["containerPort"]
            return port
    raise AssertionError(f"no port named {name}")


def duration_seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    assert match, f"httpTimeout {text!r} is not a duration like 2s"
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60}[match[2]]


EXPECTED_KINDS = {
    "default": {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    },
    "kubeadm": {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ValidatingWebhookConfiguration",
    },
    "monitoring": {"ConfigMap", "PodMonitor", "PrometheusRule"},
}
EXPECTED_KINDS["cert-manager"] = EXPECTED_KINDS["default"] | {"Issuer", "Certificate"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_expected_kinds(
    rendered: dict[str, list[RawObject]], overlay: str
) -> None:
    """Each overlay renders with kubectl kustomize, to exactly the kinds it should hold."""
    objects = rendered[overlay]
    assert {o["kind"] for o in objects} == EXPECTED_KINDS[overlay]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespaced_objects_live_in_the_extender_namespace(
    rendered: dict[str, list[RawObject]], overlay: str
) -> None:
    """Everything namespaced is in hostport-system, bar the scheduler's kube-system reader."""
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    cluster_scoped |= {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}
    for o in rendered[overlay]:
        if o["kind"] in cluster_scoped:
            assert "namespace" not in o["metadata"]
            continue
        expected = (
            "kube-system" if o["metadata"]["name"].endswith("authentication-reader") else NAMESPACE
        )
        assert o["metadata"].get("namespace") == expected, (o["kind"], o["metadata"]["name"])


def test_extender_rbac_is_least_privilege(rendered: dict[str, list[RawObject]]) -> None:
    """The extender may read pods and nodes and create bindings: nothing more, no wildcards."""
    role = find(rendered["default"], "ClusterRole", "hostport-extender")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/binding"], "verbs": ["create"]},
    ]
    for overlay in OVERLAYS:
        for o in rendered[overlay]:
            for rule in o.get("rules", []):
                for key in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule.get(key, []), (o["metadata"]["name"], rule)
                assert "secrets" not in rule.get("resources", [])


def test_scheduler_roles_and_its_own_lease(rendered: dict[str, list[RawObject]]) -> None:
    """The scheduler gets the upstream roles and may update only its own leader lease."""
    objects = rendered["default"]
    bound_roles = {
        o["roleRef"]["name"]
        for o in objects
        if o["kind"] in ("ClusterRoleBinding", "RoleBinding")
        and o["subjects"]
        == [{"kind": "ServiceAccount", "name": "hostport-extender", "namespace": NAMESPACE}]
    }
    assert bound_roles == {
        "hostport-extender",
        "system:kube-scheduler",
        "system:volume-scheduler",
        "extension-apiserver-authentication-reader",
        "hostport-aware-scheduler-leader-election",
    }
    config = scheduler_config(objects, "hostport-aware-scheduler-config")
    election = config["leaderElection"]
    assert election["leaderElect"] is True
    assert election["resourceName"] != "kube-scheduler"
    lease_role = find(objects, "Role", "hostport-aware-scheduler-leader-election")
    assert lease_role["metadata"]["namespace"] == election["resourceNamespace"]
    assert lease_role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [election["resourceName"]],
            "verbs": ["get", "update"],
        },
    ]


def check_extender_block(extender: RawObject) -> None:
    """Validate one `extenders[]` entry as the upstream type and validation would."""
    unknown = set(extender) - set(EXTENDER_FIELDS)
    assert not unknown, f"fields the upstream Extender type does not have: {unknown}"
    for key, value in extender.items():
        assert isinstance(value, EXTENDER_FIELDS[key]), (key, value)
    assert extender["urlPrefix"]
    if extender.get("prioritizeVerb"):
        assert extender["weight"] > 0
    assert set(extender.get("tlsConfig", {})) <= TLS_CONFIG_FIELDS
    if extender.get("enableHTTPS"):
        assert extender["urlPrefix"].startswith("https://")


def served_verbs() -> set[str]:
    """The POST routes the real extender application serves."""
    cluster = Cluster(Settings())
    app = create_app(cluster, Settings(), binder=SnapshotBinder(cluster), readiness=AlwaysReady())
    return {
        route.resource.canonical.strip("/")
        for route in app.router.routes()
        if route.method == "POST" and route.resource is not None
    }


@pytest.mark.parametrize(
    ("overlay", "configmap", "workload", "ignorable"),
    [
        (
            "default",
            "hostport-aware-scheduler-config",
            ("Deployment", "hostport-aware-scheduler"),
            False,
        ),
        ("kubeadm", "default-scheduler-extender-config", ("DaemonSet", "hostport-extender"), True),
    ],
)
def test_scheduler_config_extender_block(
    rendered: dict[str, list[RawObject]],
    overlay: str,
    configmap: str,
    workload: tuple[str, str],
    ignorable: bool,
) -> None:
    """The extender block has only upstream fields and points at the verbs and port we serve."""
    objects = rendered[overlay]
    config = scheduler_config(objects, configmap)
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert config["kind"] == "KubeSchedulerConfiguration"
    (profile,) = config["profiles"]
    assert profile["percentageOfNodesToScore"] == 100
    (extender,) = config["extenders"]
    check_extender_block(extender)
    verbs = {extender[key] for key in ("filterVerb", "prioritizeVerb", "bindVerb", "preemptVerb")}
    assert verbs == set(VERBS) <= served_verbs()
    assert extender["nodeCacheCapable"] is True
    assert extender["ignorable"] is ignorable
    assert duration_seconds(extender["httpTimeout"]) <= 2

    pod_spec = find(objects, *workload)["spec"]["template"]["spec"]
    args = parse_cli(container(pod_spec, "extender")["args"])
    assert args.command == "serve"
    assert extender["urlPrefix"] == f"http://{args.listen}"
    assert args.listen.startswith("127.0.0.1:"), "the verbs are served on loopback only"
    if overlay == "default":
        assert profile["schedulerName"] == ROUTED_SCHEDULER == args.scheduler_name
    else:
        assert profile["schedulerName"] == "default-scheduler"


@pytest.mark.parametrize(
    ("overlay", "workload"),
    [
        ("default", ("Deployment", "hostport-aware-scheduler")),
        ("kubeadm", ("DaemonSet", "hostport-extender")),
    ],
)
def test_extender_probes_hit_the_ops_listener(
    rendered: dict[str, list[RawObject]], overlay: str, workload: tuple[str, str]
) -> None:
    """Liveness and readiness probe /healthz and /readyz on the port --ops-listen opens."""
    pod_spec = find(rendered[overlay], *workload)["spec"]["template"]["spec"]
    extender = container(pod_spec, "extender")
    args = parse_cli(extender["args"])
    ops_port = port_of(args.ops_listen)
    assert named_port(extender, "ops") == ops_port
    assert args.ops_listen.startswith("0.0.0.0:"), "kubelet probes come in on the pod IP"
    assert extender["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert extender["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert named_port(extender, extender[probe]["httpGet"]["port"]) == ops_port
    assert args.log_format == "json"


def test_second_scheduler_deployment(rendered: dict[str, list[RawObject]]) -> None:
    """Two replicas, spread, critical priority, scheduled by the default scheduler, hardened."""
    objects = rendered["default"]
    deployment = find(objects, "Deployment", "hostport-aware-scheduler")
    assert deployment["spec"]["replicas"] >= 2
    template = deployment["spec"]["template"]
    pod_spec = template["spec"]
    assert pod_spec["priorityClassName"] == "system-cluster-critical"
    assert pod_spec["schedulerName"] == "default-scheduler"
    terms = pod_spec["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert {t["podAffinityTerm"]["topologyKey"] for t in terms} >= {"kubernetes.io/hostname"}
    labels = template["metadata"]["labels"]
    assert labels[SELF_LABEL[0]] == SELF_LABEL[1], "the webhook must recognise its own pods"
    pdb = find(objects, "PodDisruptionBudget", "hostport-aware-scheduler")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"] == pdb["spec"]["selector"]["matchLabels"]

    scheduler = container(pod_spec, "kube-scheduler")
    assert scheduler["image"].startswith("registry.k8s.io/kube-scheduler:v1.")
    config_flag = next(a for a in scheduler["command"] if a.startswith("--config="))
    config_path = Path(config_flag.removeprefix("--config="))
    (mount,) = [m for m in scheduler["volumeMounts"] if m["name"] == "config"]
    assert config_path.parent == Path(mount["mountPath"])
    (volume,) = [v for v in pod_spec["volumes"] if v["name"] == "config"]
    configmap = find(objects, "ConfigMap", volume["configMap"]["name"])
    assert config_path.name in configmap["data"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert scheduler[probe]["httpGet"] == {"path": path, "port": "scheduler", "scheme": "HTTPS"}
    assert named_port(scheduler, "scheduler") == 10259

    for c in pod_spec["containers"]:
        assert c["resources"]["requests"]["cpu"]
        assert c["resources"]["limits"]["memory"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod_spec["securityContext"]["runAsNonRoot"] is True


def test_webhook_configuration(rendered: dict[str, list[RawObject]]) -> None:
    """failurePolicy Ignore, short timeout, v1 reviews, and it reaches the webhook's /mutate."""
    objects = rendered["default"]
    (hook,) = named(objects, "MutatingWebhookConfiguration", "hostport-extender")["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["timeoutSeconds"] <= 5
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "None"
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    excluded = next(
        e["values"]
        for e in hook["namespaceSelector"]["matchExpressions"]
        if e["key"] == "kubernetes.io/metadata.name"
    )
    assert set(excluded) == DEFAULT_EXCLUDED_NAMESPACES
    by_key: dict[str, list[str]] = {}
    for key, value in DEFAULT_BOOTSTRAP_LABELS:
        by_key.setdefault(key, []).append(value)
    by_key[SELF_LABEL[0]] = [SELF_LABEL[1]]
    expressions = hook["objectSelector"]["matchExpressions"]
    assert sorted(expressions, key=lambda e: e["key"]) == [
        {"key": key, "operator": "NotIn", "values": sorted(values)}
        for key, values in sorted(by_key.items())
    ]
    (bootstrap,) = [c for c in hook["matchConditions"] if c["name"] == "not-a-bootstrap-daemonset"]
    names = set(re.findall(r"'([a-z0-9-]+)'", bootstrap["expression"]))
    assert names == DEFAULT_BOOTSTRAP_DAEMONSETS

    service_ref = hook["clientConfig"]["service"]
    assert service_ref["path"] == "/mutate"
    service = find(objects, "Service", service_ref["name"])
    assert service["metadata"]["namespace"] == service_ref["namespace"]
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == service_ref["port"]

    deployment = find(objects, "Deployment", "hostport-extender-webhook")
    template = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert template["metadata"]["labels"][SELF_LABEL[0]] == SELF_LABEL[1]
    webhook = container(template["spec"], "webhook")
    args = parse_cli(webhook["args"])
    assert args.command == "webhook"
    assert named_port(webhook, service_port["targetPort"]) == port_of(args.listen)
    assert webhook["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    (mount,) = webhook["volumeMounts"]
    assert args.tls_cert == Path(mount["mountPath"]) / "tls.crt"
    assert args.tls_key == Path(mount["mountPath"]) / "tls.key"
    policy = policy_from_args(args)
    assert policy.scheduler_name == ROUTED_SCHEDULER
    assert policy.excluded_namespaces == DEFAULT_EXCLUDED_NAMESPACES
    assert find(objects, "Namespace")["metadata"]["labels"]["hostports.dev/routing"] == "disabled"


def test_webhook_reads_only_the_scheduler_lease(rendered: dict[str, list[RawObject]]) -> None:
    """The webhook may `get` one Lease: the one the second scheduler's leader election writes."""
    objects = rendered["default"]
    election = scheduler_config(objects, "hostport-aware-scheduler-config")["leaderElection"]
    deployment = find(objects, "Deployment", "hostport-extender-webhook")
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is True
    args = parse_cli(container(pod_spec, "webhook")["args"])
    assert args.scheduler_lease == f"{election['resourceNamespace']}/{election['resourceName']}"
    account = {
        "kind": "ServiceAccount",
        "name": pod_spec["serviceAccountName"],
        "namespace": NAMESPACE,
    }
    bindings = [
        o
        for o in objects
        if o["kind"] in ("RoleBinding", "ClusterRoleBinding") and account in o["subjects"]
    ]
    assert [(b["kind"], b["metadata"].get("namespace")) for b in bindings] == [
        ("RoleBinding", election["resourceNamespace"])
    ]
    role = find(objects, "Role", bindings[0]["roleRef"]["name"])
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [election["resourceName"]],
            "verbs": ["get"],
        }
    ]


def selector_matches(selector: RawObject, labels: dict[str, str]) -> bool:
    """A label selector's matchLabels/matchExpressions, as the API server evaluates them."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def webhook_is_called(hook: RawObject, raw_pod: RawObject, namespace: str) -> bool:
    """Whether the API server would send this pod's CREATE to the webhook at all."""
    namespace_labels = {"kubernetes.io/metadata.name": namespace}
    if not selector_matches(hook["namespaceSelector"], namespace_labels):
        return False
    if not selector_matches(hook["objectSelector"], raw_pod["metadata"].get("labels", {})):
        return False
    env = celpy.Environment()
    activation = {"object": json_to_cel(raw_pod)}
    return all(
        bool(env.program(env.compile(condition["expression"])).evaluate(activation))
        for condition in hook["matchConditions"]
    )


@pytest.mark.parametrize(
    ("raw_pod", "namespace", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_webhook_is_called_for_exactly_the_pods_it_routes(
    rendered: dict[str, list[RawObject]], raw_pod: RawObject, namespace: str, reason: str
) -> None:
    """Selectors and CEL match conditions let through exactly the pods the webhook would route."""
    configuration = named(rendered["default"], "MutatingWebhookConfiguration", "hostport-extender")
    (hook,) = configuration["webhooks"]
    args = parse_cli(["webhook", "--tls-cert", "c", "--tls-key", "k"])
    decision = webhook_decision(raw_pod, namespace, policy_from_args(args))
    assert decision.reason == reason
    assert webhook_is_called(hook, raw_pod, namespace) == (reason == ROUTED)


def served_webhook_paths() -> set[str]:
    """The POST routes the real webhook application serves."""
    lease = LeaseWatch(None, "", "none")
    app = create_webhook_app(RoutingPolicy(), new_metrics(), lease, GuardPolicy())
    return {
        route.resource.canonical
        for route in app.router.routes()
        if route.method == "POST" and route.resource is not None
    }


@pytest.mark.parametrize("overlay", ["default", "kubeadm", "cert-manager"])
def test_guard_configuration(rendered: dict[str, list[RawObject]], overlay: str) -> None:
    """The guard: pod DELETEs only, Ignore on failure, the served /validate, the same users."""
    objects = rendered[overlay]
    (hook,) = find(objects, "ValidatingWebhookConfiguration")["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["timeoutSeconds"] <= 5
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "None"
    assert hook["rules"] == [
        {
            "operations": ["DELETE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    service_ref = hook["clientConfig"]["service"]
    assert service_ref["path"] in served_webhook_paths()
    service = find(objects, "Service", service_ref["name"])
    assert service["metadata"]["namespace"] == service_ref["namespace"]
    assert service["spec"]["ports"][0]["port"] == service_ref["port"]
    deployment = find(objects, "Deployment", "hostport-extender-webhook")
    args = parse_cli(container(deployment["spec"]["template"]["spec"], "webhook")["args"])
    (users,) = [c for c in hook["matchConditions"] if c["name"] == "scheduler-requests-only"]
    assert set(re.findall(r"'([^']+)'", users["expression"])) == (
        guard_from_args(args).scheduler_users
    )
    if overlay == "kubeadm":
        assert args.scheduler_lease == "none", "no second scheduler there: never route"
        assert not any(o["kind"] == "MutatingWebhookConfiguration" for o in objects)


def test_listen_webhook_is_opt_in_per_namespace(rendered: dict[str, list[RawObject]]) -> None:
    """/materialise is served, reached only from labelled namespaces, and off in the server."""
    objects = rendered["default"]
    (hook,) = named(objects, "MutatingWebhookConfiguration", "hostport-extender-listen")["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["timeoutSeconds"] <= 5
    assert hook["clientConfig"]["service"]["path"] in served_webhook_paths()
    assert hook["namespaceSelector"] == {"matchLabels": {"hostports.dev/materialise": "enabled"}}
    deployment = find(objects, "Deployment", "hostport-extender-webhook")
    args = parse_cli(container(deployment["spec"]["template"]["spec"], "webhook")["args"])
    assert args.materialise_listeners is False, "opt-in: the README says how to turn it on"


@pytest.mark.parametrize(
    ("raw_pod", "added"), [(c[1], c[2]) for c in LISTEN_CASES], ids=[c[0] for c in LISTEN_CASES]
)
def test_listen_webhook_is_called_for_every_pod_it_would_change(
    rendered: dict[str, list[RawObject]], raw_pod: RawObject, added: list[str]
) -> None:
    """The CEL condition lets through every pod the plan changes (and only annotated ones)."""
    configuration = named(
        rendered["default"], "MutatingWebhookConfiguration", "hostport-extender-listen"
    )
    (hook,) = configuration["webhooks"]
    env = celpy.Environment()
    activation = {"object": json_to_cel(raw_pod)}
    called = all(
        bool(env.program(env.compile(c["expression"])).evaluate(activation))
        for c in hook["matchConditions"]
    )
    if added:
        assert called
    annotations = raw_pod["metadata"].get("annotations", {})
    if "hostports.dev/listen" not in annotations or not raw_pod["spec"].get("hostNetwork"):
        assert not called


def guard_is_called(hook: RawObject, review: RawObject) -> bool:
    """Whether the API server would send this request to the guard (rules, then CEL)."""
    request = review["request"]
    resource = request["resource"]["resource"]
    if request.get("subResource"):
        resource += "/" + request["subResource"]
    if not any(
        request["operation"] in rule["operations"]
        and request["resource"]["group"] in rule["apiGroups"]
        and resource in rule["resources"]
        for rule in hook["rules"]
    ):
        return False
    env = celpy.Environment()
    activation = {
        "request": json_to_cel(request),
        "object": json_to_cel(request["object"]),
        "oldObject": json_to_cel(request["oldObject"]),
    }
    return all(
        bool(env.program(env.compile(condition["expression"])).evaluate(activation))
        for condition in hook["matchConditions"]
    )


@pytest.mark.parametrize(
    ("review", "reason"), [c[1:] for c in GUARD_CASES], ids=[c[0] for c in GUARD_CASES]
)
def test_guard_is_called_for_every_deletion_it_would_deny(
    rendered: dict[str, list[RawObject]], review: RawObject, reason: str
) -> None:
    """Rules and CEL send the guard every scheduler DELETE it refuses, and no one else's."""
    (hook,) = find(rendered["default"], "ValidatingWebhookConfiguration")["webhooks"]
    called = guard_is_called(hook, review)
    if reason in DENIALS:
        assert called
    if reason in (NOT_A_SCHEDULER, NOT_A_POD_DELETE):
        assert not called


def test_cert_manager_overlay_wires_the_certificate(rendered: dict[str, list[RawObject]]) -> None:
    """The Certificate fills the Secret the webhook mounts; its CA is injected into the hook."""
    objects = rendered["cert-manager"]
    certificate = find(objects, "Certificate")
    deployment = find(objects, "Deployment", "hostport-extender-webhook")
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    assert certificate["spec"]["secretName"] == volume["secret"]["secretName"]
    meta = certificate["metadata"]
    configurations = [
        o
        for o in objects
        if o["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
    ]
    assert len(configurations) == 3
    for configuration in configurations:
        annotation = configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        assert annotation == f"{meta['namespace']}/{meta['name']}"
    (hook,) = configuration["webhooks"]
    service = hook["clientConfig"]["service"]
    assert f"{service['name']}.{service['namespace']}.svc" in certificate["spec"]["dnsNames"]
    assert certificate["spec"]["usages"] == ["server auth", "digital signature"]


def test_kubeadm_overlay_runs_beside_the_default_scheduler(
    rendered: dict[str, list[RawObject]],
) -> None:
    """The extender runs on control-plane host networking with its ports declared."""
    objects = rendered["kubeadm"]
    daemonset = find(objects, "DaemonSet", "hostport-extender")
    pod_spec = daemonset["spec"]["template"]["spec"]
    assert pod_spec["hostNetwork"] is True
    assert pod_spec["nodeSelector"] == {"node-role.kubernetes.io/control-plane": ""}
    extender = container(pod_spec, "extender")
    args = parse_cli(extender["args"])
    declared = {(p["hostPort"], p.get("hostIP", "")) for p in extender["ports"]}
    assert declared == {(port_of(args.listen), "127.0.0.1"), (port_of(args.ops_listen), "")}
    patch = yaml.safe_load((CONFIG / "kubeadm/kubeadm-patch.yaml").read_text())
    (config_arg,) = patch["scheduler"]["extraArgs"]
    (volume,) = patch["scheduler"]["extraVolumes"]
    assert config_arg == {"name": "config", "value": volume["mountPath"]}
    assert Path(volume["hostPath"]).name == "kube-scheduler-config.yaml"
    on_disk = yaml.safe_load((CONFIG / "kubeadm/kube-scheduler-config.yaml").read_text())
    assert on_disk == scheduler_config(objects, "default-scheduler-extender-config")
    readme = (CONFIG / "kubeadm/README.md").read_text()
    assert "Trade-offs" in readme


def test_alerts_and_dashboard_render(
    rendered: dict[str, list[RawObject]],
) -> None:
    """The alerts the issue asks for exist and the dashboard ships in its ConfigMap (the metrics
    they query are checked against running servers in tests/deploy/test_monitoring.py)."""
    rule = find(rendered["monitoring"], "PrometheusRule")
    alerts = {item.get("alert") for group in rule["spec"]["groups"] for item in group["rules"]}
    assert {
        "HostportExtenderNotReady",
        "HostportExtenderFilterLatencyHigh",
        "HostportExtenderWatchStale",
        "HostportNodePortConflict",
    } <= alerts
    dashboard = json.loads((CONFIG / "monitoring/hostport-extender-dashboard.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    configmap = find(rendered["monitoring"], "ConfigMap", "hostport-extender-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["hostport-extender-dashboard.json"]) == dashboard


def sample_reserved() -> str:
    patch = yaml.safe_load((CONFIG / "samples/node-reserved-ports.yaml").read_text())
    text: str = patch["metadata"]["annotations"]["hostports.dev/reserved"]
    return text


def test_node_reserved_sample_parses_and_covers_the_host_daemons() -> None:
    """The sample annotation parses strictly and lists kubelet, kube-proxy, exporter, EKS ports."""
    specs = parse_port_specs(sample_reserved())
    ports = {port for spec in specs for port in range(spec.first, spec.last + 1)}
    assert {10250, 10249, 10256, 9100, 2703, 2705} <= ports
    node = {
        "metadata": {"name": "n1", "annotations": {"hostports.dev/reserved": sample_reserved()}}
    }
    decoded = decode_node(node)
    assert decoded.problems == ()
    assert len(decoded.reserved) == len(specs)


async def test_node_reserved_sample_rejects_pods_on_those_ports(aiohttp_client: Any) -> None:
    """A node patched with the sample turns away a pod wanting 2703 and accepts one on 8080."""
    cluster = Cluster(Settings())
    cluster.nodes.replace(
        [
            {
                "metadata": {
                    "name": "patched",
                    "annotations": {"hostports.dev/reserved": sample_reserved()},
                }
            },
            {"metadata": {"name": "plain"}},
        ]
    )
    app = create_app(cluster, Settings(), binder=SnapshotBinder(cluster), readiness=AlwaysReady())
    client = await aiohttp_client(app)

    async def filter_with_host_port(port: int) -> RawObject:
        pod = {
            "metadata": {"name": f"p{port}", "namespace": "t", "uid": f"u{port}"},
            "spec": {
                "containers": [{"name": "c", "ports": [{"containerPort": port, "hostPort": port}]}]
            },
        }
        response = await client.post(
            "/filter", json={"Pod": pod, "NodeNames": ["patched", "plain"]}
        )
        answer: RawObject = await response.json()
        return answer

    blocked = await filter_with_host_port(2703)
    assert blocked["NodeNames"] == ["plain"]
    (reason,) = {**blocked["FailedNodes"], **blocked["FailedAndUnresolvableNodes"]}.values()
    assert "2703/TCP" in reason
    assert (await filter_with_host_port(8080))["NodeNames"] == ["patched", "plain"]


RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod_spec: RawObject) -> list[str]:
    """What the `restricted` Pod Security Standard would refuse in this pod spec."""
    found = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(field):
            found.append(field)
    pod_security = pod_spec.get("securityContext", {})
    for c in pod_spec["containers"] + pod_spec.get("initContainers", []):
        security = c.get("securityContext", {})
        name = c["name"]
        if any(p.get("hostPort") for p in c.get("ports", [])):
            found.append(f"{name}: hostPort")
        if security.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation")
        if security.get("capabilities", {}).get("drop") != ["ALL"]:
            found.append(f"{name}: capabilities not dropped")
        if not security.get("runAsNonRoot", pod_security.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot")
        seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile")
    for volume in pod_spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {kinds}")
    return found


@pytest.mark.parametrize("overlay", ["default", "kubeadm", "cert-manager"])
def test_workloads_pass_their_namespace_pod_security_level(
    rendered: dict[str, list[RawObject]], overlay: str
) -> None:
    """Pods meet the namespace's enforced level: restricted, or privileged only for hostNetwork."""
    objects = rendered[overlay]
    level = find(objects, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
    workloads = [o for o in objects if o["kind"] in ("Deployment", "DaemonSet")]
    assert workloads
    for workload in workloads:
        pod_spec = workload["spec"]["template"]["spec"]
        violations = restricted_violations(pod_spec)
        if level == "restricted" or workload["kind"] == "Deployment":
            assert violations == [], workload["metadata"]["name"]
        else:
            # Privileged only because the kubeadm DaemonSet needs the host network.
            assert level == "privileged"
            assert overlay == "kubeadm"
            assert pod_spec["hostNetwork"] is True
            assert violations == ["hostNetwork", "extender: hostPort"]


def schema_errors(value: Any, type_name: str, path: str) -> Iterator[str]:
    """Fields the Kubernetes OpenAPI schema does not have, and values of the wrong JSON type.

    Walks the official client's generated models (their `attribute_map` and `openapi_types`
    mirror the API's OpenAPI schema), so a misspelt field fails here instead of being dropped
    or refused by the API server.
    """
    if type_name.startswith("List["):
        if not isinstance(value, list):
            yield f"{path}: want a list"
            return
        for index, item in enumerate(value):
            yield from schema_errors(item, type_name[5:-1], f"{path}[{index}]")
        return
    if type_name.startswith("Dict["):
        if not isinstance(value, dict):
            yield f"{path}: want a mapping"
            return
        inner = type_name[5:-1].partition(", ")[2]
        for key, item in value.items():
            yield from schema_errors(item, inner, f"{path}.{key}")
        return
    primitives: dict[str, type | tuple[type, ...]] = {
        "str": str,
        "int": int,
        "bool": bool,
        "float": (int, float),
        "object": object,
        "datetime": str,
        "bytearray": str,
    }
    if type_name in primitives:
        if not isinstance(value, primitives[type_name]):
            yield f"{path}: {value!r} is not {type_name}"
        return
    model = getattr(kubernetes.client, type_name)
    if not isinstance(value, dict):
        yield f"{path}: want an object ({type_name})"
        return
    by_json_name = {json_name: name for name, json_name in model.attribute_map.items()}
    for key, item in value.items():
        if key not in by_json_name:
            yield f"{path}.{key}: no such field in {type_name}"
        else:
            yield from schema_errors(item, model.openapi_types[by_json_name[key]], f"{path}.{key}")


CORE_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "Service",
    "Deployment",
    "DaemonSet",
    "PodDisruptionBudget",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
}


@pytest.mark.parametrize("overlay", ["default", "kubeadm", "cert-manager"])
def test_objects_match_the_kubernetes_schema(
    rendered: dict[str, list[RawObject]], overlay: str
) -> None:
    """Every built-in object uses only fields of its Kubernetes type, with the right JSON types."""
    checked = 0
    for o in rendered[overlay]:
        if o["kind"] not in CORE_KINDS:
            continue
        errors = list(schema_errors(o, f"V1{o['kind']}", f"{o['kind']}/{o['metadata']['name']}"))
        assert errors == []
        checked += 1
    assert checked >= 6


def test_schema_check_catches_a_misspelt_field() -> None:
    """The schema walk is not vacuous: a typo deep in a pod template is reported."""
    deployment = {
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "selector": {},
            "template": {
                "spec": {
                    "containers": [
                        {"name": "c", "securityContext": {"readOnlyRootFileSystem": True}}
                    ]
                }
            },
        },
    }
    assert list(schema_errors(deployment, "V1Deployment", "d")) == [
        "d.spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem: "
        "no such field in V1SecurityContext"
    ]


async def test_walkthrough_sample_keeps_the_agent_off_the_protected_ingress(
    aiohttp_client: Any,
) -> None:
    """The README's EKS walkthrough answer: the agent's pod for an ingress node is refused as
    unresolvable (no preemption can help), naming the ingress Deployment that holds :80."""
    loaded = yaml.safe_load((CONFIG / "samples/eks-routed-cluster.yaml").read_text())["items"]
    cluster = Cluster(Settings())
    cluster.nodes.replace([o for o in loaded if o["kind"] == "Node"])
    cluster.pods.replace([o for o in loaded if o["kind"] == "Pod"])
    app = create_app(cluster, Settings(), binder=SnapshotBinder(cluster), readiness=AlwaysReady())
    client = await aiohttp_client(app)
    (agent,) = [o for o in loaded if o["metadata"]["name"] == "eks-pod-identity-agent-b9w4n"]
    response = await client.post(
        "/filter", json={"Pod": agent, "NodeNames": ["ip-10-0-2-11.ec2.internal"]}
    )
    answer: RawObject = await response.json()
    assert answer == {
        "FailedNodes": {},
        "FailedAndUnresolvableNodes": {
            "ip-10-0-2-11.ec2.internal": "80/TCP on every address held by hostPort pods of "
            "Deployment ingress-nginx/ingress-nginx-controller"
        },
        "Error": "",
        "NodeNames": [],
    }
    readme = (ROOT / "README.md").read_text()
    assert json.dumps(answer, separators=(",", ":")) in readme
