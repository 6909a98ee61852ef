"""Synthetic clusters in the shape of `kubectl get nodes,pods -A -o json`, reproducible from a seed.

The server under test loads these as snapshots, and the ingest benchmark feeds the same objects to
the index, so they must look like real API objects in size and in the host ports they claim:
most pods claim nothing, some claim `hostPort`s, hostNetwork DaemonSets on every node declare and
annotate their listen ports, and nodes reserve the ports of their host daemons.

Every node's pods come from their own random stream (`seed` and node index), so a caller can
generate any node's pods alone, and one seed always gives byte-identical output.
"""

from __future__ import annotations

import argparse
import random
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

RawObject = dict[str, Any]

LISTEN_ANNOTATION = "hostports.dev/listen"
RESERVED_ANNOTATION = "hostports.dev/reserved"
BASE_RESERVED = "22,10250,10249,10256"
CONTROL_PLANE_RESERVED = "2379-2380,6443,10257,10259"
WEB_HOSTPORT = 18080
"""The hostPort of the captured `hostport` pod in payloads/: some generated nodes hold it."""

_EPOCH = "2026-11-01T00:00:00Z"
_ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")
_INSTANCE_TYPES = (
    ("m6i.2xlarge", "8", "32509344Ki", "7910m", "31258528Ki"),
    ("m6i.4xlarge", "16", "65023132Ki", "15890m", "63625116Ki"),
    ("c6i.4xlarge", "16", "32509344Ki", "15890m", "31258528Ki"),
    ("r6i.2xlarge", "8", "65023132Ki", "7910m", "63625116Ki"),
)
_IMAGE_REPOS = (
    "registry.k8s.io/kube-proxy",
    "quay.io/calico/node",
    "quay.io/calico/cni",
    "quay.io/prometheus/node-exporter",
    "gcr.io/datadoghq/agent",
    "registry.k8s.io/ingress-nginx/controller",
    "registry.k8s.io/pause",
    "registry.k8s.io/coredns/coredns",
    "docker.io/library/nginx",
    "docker.io/library/redis",
    "docker.io/library/postgres",
    "docker.io/envoyproxy/envoy",
    "ghcr.io/acme/checkout-api",
    "ghcr.io/acme/catalog",
    "ghcr.io/acme/payments",
    "ghcr.io/acme/search",
    "ghcr.io/acme/frontend",
    "ghcr.io/acme/worker",
    "ghcr.io/acme/game-server",
    "public.ecr.aws/aws-observability/aws-for-fluent-bit",
    "public.ecr.aws/ebs-csi-driver/aws-ebs-csi-driver",
    "registry.k8s.io/sig-storage/csi-node-driver-registrar",
    "registry.k8s.io/sig-storage/livenessprobe",
    "docker.io/istio/proxyv2",
    "docker.io/grafana/promtail",
    "docker.io/bitnami/kubectl",
    "docker.io/library/busybox",
    "docker.io/library/python",
    "docker.io/library/golang",
    "docker.io/otel/opentelemetry-collector-contrib",
)
_WORKLOADS = (
    # (namespace, app, image, containerPort, cpu, memory, whether an envoy sidecar runs)
    ("shop", "checkout-api", "ghcr.io/acme/checkout-api:v3.14.2", 8080, "250m", "256Mi", ""),
    ("shop", "catalog", "ghcr.io/acme/catalog:v2.7.0", 8080, "500m", "512Mi", "envoy"),
    ("shop", "frontend", "ghcr.io/acme/frontend:v5.1.9", 3000, "100m", "128Mi", ""),
    ("payments", "payments", "ghcr.io/acme/payments:v1.22.4", 8443, "500m", "1Gi", "envoy"),
    ("search", "search", "ghcr.io/acme/search:v0.9.31", 9200, "1", "2Gi", ""),
    ("jobs", "worker", "ghcr.io/acme/worker:v4.0.3", 8080, "200m", "384Mi", ""),
    ("data", "redis", "docker.io/library/redis:7.4.1", 6379, "100m", "256Mi", ""),
    ("observability", "otel-gateway", "docker.io/otel/opentelemetry-collector-contrib:0.112.0",
     4317, "200m", "512Mi", ""),
)  # fmt: skip
_DEFAULT_TOLERATIONS = (
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
)
_DAEMONSET_TOLERATIONS = (
    *_DEFAULT_TOLERATIONS,
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ("node.kubernetes.io/network-unavailable", "NoSchedule"),
)


@dataclass(frozen=True, slots=True)
class DaemonSet:
    """A hostNetwork DaemonSet that runs one pod on every node."""

    namespace: str
    name: str
    image: str
    declared: tuple[tuple[str, int, str], ...]
    """(port name, containerPort, protocol): the API defaults hostPort to the same number."""
    listen: str
    """The `hostports.dev/listen` annotation: every socket the agent opens, declared or not."""


DAEMONSETS = (
    DaemonSet("kube-system", "kube-proxy", "registry.k8s.io/kube-proxy:v1.36.2", (), ""),
    DaemonSet(
        "kube-system", "calico-node", "quay.io/calico/node:v3.29.1", (), "179,9099@127.0.0.1"
    ),
    DaemonSet(
        "monitoring",
        "node-exporter",
        "quay.io/prometheus/node-exporter:v1.8.2",
        (("metrics", 9100, "TCP"),),
        "9100",
    ),
    DaemonSet(
        "datadog",
        "datadog-agent",
        "gcr.io/datadoghq/agent:7.59.0",
        (("traceport", 8126, "TCP"),),
        "8125/UDP,8126",
    ),
)
"""Four agents per node, as on a typical managed cluster (kube-proxy declares and annotates nothing:
its ports are in the node's reserved annotation, which is how a cluster admin would describe it)."""


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """What to generate: `nodes` nodes with `pods_per_node` pods each, from `seed`."""

    nodes: int
    pods_per_node: int
    seed: int = 1

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"nodes must be at least 1, got {self.nodes}")
        if not 0 <= self.pods_per_node <= 110:
            raise ValueError(
                f"pods_per_node must be 0..110 (kubelet max), got {self.pods_per_node}"
            )

    @property
    def pods(self) -> int:
        """The number of pods the cluster holds."""
        return self.nodes * self.pods_per_node


def node_ip(index: int) -> str:
    """The InternalIP of node `index`: 250 nodes per /24 inside 10.0.0.0/8."""
    subnet, host = divmod(index, 250)
    return f"10.{subnet // 256}.{subnet % 256}.{host + 4}"


def node_name(index: int) -> str:
    """An EKS-style node name, as long as real ones, so request bodies have a realistic size."""
    return "ip-" + node_ip(index).replace(".", "-") + ".ec2.internal"


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _suffix(rng: random.Random, length: int) -> str:
    return "".join(rng.choices("bcdfghjklmnpqrstvwxz2456789", k=length))


def _hex(rng: random.Random, length: int) -> str:
    return f"{rng.getrandbits(4 * length):0{length}x}"


def _timestamp(rng: random.Random) -> str:
    day = rng.randint(1, 20)
    return f"2026-11-{day:02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"


def _reserved(index: int, rng: random.Random) -> str:
    reserved = BASE_RESERVED
    if index < 3:
        reserved += "," + CONTROL_PLANE_RESERVED + "@" + node_ip(index)
    elif rng.random() < 0.05:
        reserved += ",8080-8089"  # a host daemon outside Kubernetes, on a few nodes
    return reserved


def generate_node(spec: ClusterSpec, index: int) -> RawObject:
    """Node `index` of the cluster, as `kubectl get node -o json` prints it."""
    rng = random.Random(f"{spec.seed}:node:{index}")
    name = node_name(index)
    ip = node_ip(index)
    zone = _ZONES[index % len(_ZONES)]
    instance, cpu, memory, alloc_cpu, alloc_memory = rng.choice(_INSTANCE_TYPES)
    control_plane = index < 3
    labels = {
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/instance-type": instance,
        "beta.kubernetes.io/os": "linux",
        "failure-domain.beta.kubernetes.io/region": "us-east-1",
        "failure-domain.beta.kubernetes.io/zone": zone,
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": instance,
        "topology.kubernetes.io/region": "us-east-1",
        "topology.kubernetes.io/zone": zone,
        "topology.ebs.csi.aws.com/zone": zone,
        "nodepool": "system" if control_plane else ("ingress" if index % 20 == 7 else "general"),
    }
    if control_plane:
        labels["node-role.kubernetes.io/control-plane"] = ""
    instance_id = "i-0" + _hex(rng, 16)
    heartbeat = _timestamp(rng)
    conditions = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    ]
    images = [
        {
            "names": [
                f"{repo}@sha256:{_hex(rng, 64)}",
                f"{repo}:v{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}",
            ],
            "sizeBytes": rng.randint(300_000, 900_000_000),
        }
        for repo in rng.sample(_IMAGE_REPOS, rng.randint(18, 30))
    ]
    raw_spec: RawObject = {
        "podCIDR": f"100.{64 + index // 256 % 64}.{index % 256}.0/24",
        "podCIDRs": [f"100.{64 + index // 256 % 64}.{index % 256}.0/24"],
        "providerID": f"aws:///{zone}/{instance_id}",
    }
    if control_plane:
        raw_spec["taints"] = [
            {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
        ]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "annotations": {
                "alpha.kubernetes.io/provided-node-ip": ip,
                "csi.volume.kubernetes.io/nodeid": '{"ebs.csi.aws.com":"' + instance_id + '"}',
                RESERVED_ANNOTATION: _reserved(index, rng),
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
            "creationTimestamp": _EPOCH,
            "labels": labels,
            "name": name,
            "resourceVersion": str(1000 + index),
            "uid": _uid(rng),
        },
        "spec": raw_spec,
        "status": {
            "addresses": [
                {"address": ip, "type": "InternalIP"},
                {"address": name, "type": "InternalDNS"},
                {"address": name, "type": "Hostname"},
            ],
            "allocatable": {
                "cpu": alloc_cpu,
                "ephemeral-storage": "95491281146",
                "hugepages-1Gi": "0",
                "hugepages-2Mi": "0",
                "memory": alloc_memory,
                "pods": "110",
            },
            "capacity": {
                "cpu": cpu,
                "ephemeral-storage": "104845292Ki",
                "hugepages-1Gi": "0",
                "hugepages-2Mi": "0",
                "memory": memory,
                "pods": "110",
            },
            "conditions": [
                {
                    "lastHeartbeatTime": heartbeat,
                    "lastTransitionTime": _EPOCH,
                    "message": message,
                    "reason": reason,
                    "status": status,
                    "type": kind,
                }
                for kind, status, reason, message in conditions
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "images": images,
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": _uid(rng),
                "containerRuntimeVersion": "containerd://1.7.23",
                "kernelVersion": "6.1.115-126.197.amzn2023.x86_64",
                "kubeProxyVersion": "",
                "kubeletVersion": "v1.36.2",
                "machineID": _hex(rng, 32),
                "operatingSystem": "linux",
                "osImage": "Amazon Linux 2023.6.20241111",
                "systemUUID": "ec2" + _hex(rng, 29),
            },
        },
    }


def iter_nodes(spec: ClusterSpec) -> Iterator[RawObject]:
    """Every node, in index order."""
    for index in range(spec.nodes):
        yield generate_node(spec, index)


@dataclass(frozen=True, slots=True)
class _PodPlan:
    """What one pod is before it is dressed as an API object."""

    namespace: str
    app: str
    image: str
    owner_kind: str
    host_network: bool = False
    ports: tuple[RawObject, ...] = ()
    listen: str = ""
    container_port: int = 8080
    cpu: str = "100m"
    memory: str = "128Mi"
    sidecar: str = ""
    phase: str = "Running"
    tolerations: tuple[tuple[str, str], ...] = _DEFAULT_TOLERATIONS


def _host_port(
    name: str, container: int, host: int, protocol: str = "TCP", ip: str = ""
) -> RawObject:
    port: RawObject = {"containerPort": container, "hostPort": host, "name": name}
    if ip:
        port["hostIP"] = ip
    port["protocol"] = protocol
    return port


def _plans_for_node(spec: ClusterSpec, index: int, rng: random.Random) -> list[_PodPlan]:
    """The pods of node `index`: DaemonSets first, then host-port workloads, then plain ones."""
    plans = [
        _PodPlan(
            namespace=ds.namespace,
            app=ds.name,
            image=ds.image,
            owner_kind="DaemonSet",
            host_network=True,
            ports=tuple(_host_port(name, port, port, proto) for name, port, proto in ds.declared),
            listen=ds.listen,
            tolerations=_DAEMONSET_TOLERATIONS,
        )
        for ds in DAEMONSETS
    ]
    if index % 20 == 7:  # the ingress pool: a controller binding 80/443 through hostPort DNAT
        plans.append(
            _PodPlan(
                "ingress-nginx",
                "ingress-nginx-controller",
                "registry.k8s.io/ingress-nginx/controller:v1.11.3",
                "ReplicaSet",
                ports=(_host_port("http", 80, 80), _host_port("https", 443, 443)),
                cpu="500m",
                memory="512Mi",
            )
        )
    if rng.random() < 0.10:
        plans.append(
            _PodPlan(
                "shop",
                "web-hostport",
                "ghcr.io/acme/frontend:v5.1.9",
                "ReplicaSet",
                ports=(_host_port("http", 8080, WEB_HOSTPORT),),
            )
        )
    if rng.random() < 0.10:
        game_port = rng.randint(7000, 7999)
        plans.append(
            _PodPlan(
                "games",
                "game-server",
                "ghcr.io/acme/game-server:v2.3.0",
                "ReplicaSet",
                ports=(_host_port("game", 7777, game_port, "UDP"),),
                cpu="1",
                memory="1Gi",
            )
        )
    if rng.random() < 0.02:
        plans.append(
            _PodPlan(
                "kube-system",
                "dns-proxy",
                "registry.k8s.io/coredns/coredns:v1.11.3",
                "ReplicaSet",
                ports=(
                    _host_port("dns", 53, 53, "UDP", node_ip(index)),
                    _host_port("dns-tcp", 53, 53, "TCP", node_ip(index)),
                ),
            )
        )
    del plans[spec.pods_per_node :]
    while len(plans) < spec.pods_per_node:
        namespace, app, image, port, cpu, memory, sidecar = rng.choice(_WORKLOADS)
        finished = rng.random() < 0.02  # completed Job pods linger in real dumps
        plans.append(
            _PodPlan(
                namespace,
                app,
                image,
                "Job" if finished else "ReplicaSet",
                container_port=port,
                cpu=cpu,
                memory=memory,
                sidecar=sidecar,
                phase="Succeeded" if finished else "Running",
            )
        )
    return plans


def _container(
    name: str, image: str, plan: _PodPlan, ports: list[RawObject], mounts: list[RawObject]
) -> RawObject:
    container: RawObject = {
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "LOG_LEVEL", "value": "info"},
        ],
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "name": name,
    }
    if ports:
        container["ports"] = ports
        container["readinessProbe"] = {
            "failureThreshold": 3,
            "httpGet": {"path": "/healthz", "port": ports[0]["containerPort"], "scheme": "HTTP"},
            "periodSeconds": 10,
            "successThreshold": 1,
            "timeoutSeconds": 1,
        }
    container["resources"] = {
        "limits": {"memory": plan.memory},
        "requests": {"cpu": plan.cpu, "memory": plan.memory},
    }
    container["terminationMessagePath"] = "/dev/termination-log"
    container["terminationMessagePolicy"] = "File"
    container["volumeMounts"] = mounts
    return container


def generate_pods_for_node(spec: ClusterSpec, index: int) -> list[RawObject]:
    """The pods bound to node `index` (via spec.nodeName), as `kubectl get pod -o json` prints."""
    rng = random.Random(f"{spec.seed}:pods:{index}")
    node = node_name(index)
    host_ip = node_ip(index)
    pods = []
    for slot, plan in enumerate(_plans_for_node(spec, index, rng)):
        owner_uid = _uid(random.Random(f"{spec.seed}:owner:{plan.namespace}/{plan.app}"))
        if plan.owner_kind == "DaemonSet":
            owner_name = plan.app
            name = f"{plan.app}-{_suffix(rng, 5)}"
        else:
            owner_name = f"{plan.app}-{_suffix(rng, 10)}"
            name = f"{owner_name}-{_suffix(rng, 5)}"
        token_volume = f"kube-api-access-{_suffix(rng, 5)}"
        mounts: list[RawObject] = [
            {
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                "name": token_volume,
                "readOnly": True,
            },
            {"mountPath": "/etc/config", "name": "config"},
        ]
        ports = [dict(port) for port in plan.ports]
        if not ports and not plan.host_network:
            ports = [{"containerPort": plan.container_port, "name": "http", "protocol": "TCP"}]
        containers = [_container(plan.app, plan.image, plan, ports, mounts)]
        if plan.sidecar:
            containers.append(
                _container("envoy", "docker.io/envoyproxy/envoy:v1.32.1", plan, [], mounts[:1])
            )
        annotations = {"kubectl.kubernetes.io/restartedAt": _timestamp(rng)}
        if plan.listen:
            annotations[LISTEN_ANNOTATION] = plan.listen
        pod_ip = (
            host_ip
            if plan.host_network
            else f"100.{64 + index // 256 % 64}.{index % 256}.{slot + 2}"
        )
        started = _timestamp(rng)
        raw_spec: RawObject = {
            "containers": containers,
            "dnsPolicy": "ClusterFirstWithHostNet" if plan.host_network else "ClusterFirst",
            "enableServiceLinks": True,
        }
        if plan.host_network:
            raw_spec["hostNetwork"] = True
        raw_spec |= {
            "nodeName": node,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 2000001000 if plan.owner_kind == "DaemonSet" else 0,
            "restartPolicy": "Never" if plan.owner_kind == "Job" else "Always",
            "schedulerName": "default-scheduler",
            "securityContext": {},
            "serviceAccount": plan.app,
            "serviceAccountName": plan.app,
            "terminationGracePeriodSeconds": 30,
            "tolerations": [
                {"effect": effect, "key": key, "operator": "Exists", "tolerationSeconds": 300}
                if effect == "NoExecute" and plan.owner_kind != "DaemonSet"
                else {"effect": effect, "key": key, "operator": "Exists"}
                for key, effect in plan.tolerations
            ],
            "volumes": [
                {
                    "name": token_volume,
                    "projected": {
                        "defaultMode": 420,
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {
                                "configMap": {
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                    "name": "kube-root-ca.crt",
                                }
                            },
                            {
                                "downwardAPI": {
                                    "items": [
                                        {
                                            "fieldRef": {
                                                "apiVersion": "v1",
                                                "fieldPath": "metadata.namespace",
                                            },
                                            "path": "namespace",
                                        }
                                    ]
                                }
                            },
                        ],
                    },
                },
                {"configMap": {"defaultMode": 420, "name": f"{plan.app}-config"}, "name": "config"},
            ],
        }
        running = plan.phase == "Running"
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "annotations": annotations,
                    "creationTimestamp": started,
                    "generateName": owner_name + "-",
                    "labels": {
                        "app.kubernetes.io/name": plan.app,
                        "pod-template-hash": _hex(rng, 10),
                    },
                    "name": name,
                    "namespace": plan.namespace,
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1" if plan.owner_kind == "Job" else "apps/v1",
                            "blockOwnerDeletion": True,
                            "controller": True,
                            "kind": plan.owner_kind,
                            "name": owner_name,
                            "uid": owner_uid,
                        }
                    ],
                    "resourceVersion": str(rng.randint(10_000, 90_000_000)),
                    "uid": _uid(rng),
                },
                "spec": raw_spec,
                "status": {
                    "conditions": [
                        {
                            "lastProbeTime": None,
                            "lastTransitionTime": started,
                            "status": status,
                            "type": kind,
                        }
                        for kind, status in (
                            ("PodReadyToStartContainers", "True" if running else "False"),
                            ("Initialized", "True"),
                            ("Ready", "True" if running else "False"),
                            ("ContainersReady", "True" if running else "False"),
                            ("PodScheduled", "True"),
                        )
                    ],
                    "containerStatuses": [
                        {
                            "containerID": "containerd://" + _hex(rng, 64),
                            "image": container["image"],
                            "imageID": container["image"].rsplit(":", 1)[0]
                            + "@sha256:"
                            + _hex(rng, 64),
                            "lastState": {},
                            "name": container["name"],
                            "ready": running,
                            "restartCount": 0,
                            "started": running,
                            "state": {"running": {"startedAt": started}}
                            if running
                            else {
                                "terminated": {
                                    "exitCode": 0,
                                    "finishedAt": started,
                                    "reason": "Completed",
                                    "startedAt": started,
                                }
                            },
                        }
                        for container in containers
                    ],
                    "hostIP": host_ip,
                    "hostIPs": [{"ip": host_ip}],
                    "phase": plan.phase,
                    "podIP": pod_ip,
                    "podIPs": [{"ip": pod_ip}],
                    "qosClass": "Burstable",
                    "startTime": started,
                },
            }
        )
    return pods


def iter_pods(spec: ClusterSpec) -> Iterator[RawObject]:
    """Every pod, node by node."""
    for index in range(spec.nodes):
        yield from generate_pods_for_node(spec, index)


def write_snapshot(spec: ClusterSpec, out: BinaryIO) -> None:
    """Write the cluster as one `v1 List`, streaming: 150,000 pods never sit in memory at once."""
    out.write(b'{"apiVersion":"v1","items":[')
    first = True
    for raw in _all_objects(spec):
        if not first:
            out.write(b",")
        out.write(orjson.dumps(raw))
        first = False
    out.write(b'],"kind":"List","metadata":{"resourceVersion":""}}\n')


def _all_objects(spec: ClusterSpec) -> Iterator[RawObject]:
    yield from iter_nodes(spec)
    yield from iter_pods(spec)


def snapshot_path(directory: Path, spec: ClusterSpec) -> Path:
    """Where `ensure_snapshot` keeps the file for `spec` (same spec, same file, reused)."""
    return directory / f"cluster-n{spec.nodes}-p{spec.pods_per_node}-s{spec.seed}.json"


def ensure_snapshot(directory: Path, spec: ClusterSpec) -> Path:
    """The snapshot file for `spec`, generated once: the output is a pure function of the spec."""
    path = snapshot_path(directory, spec)
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        with partial.open("wb") as out:
            write_snapshot(spec, out)
        partial.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.generate --nodes N --pods-per-node M --seed S [-o FILE]`."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.generate",
        description="Write a synthetic cluster as a `kubectl get nodes,pods -A -o json` dump.",
    )
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--pods-per-node", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    try:
        spec = ClusterSpec(args.nodes, args.pods_per_node, args.seed)
    except ValueError as error:
        parser.error(str(error))
    if args.output is None:
        write_snapshot(spec, sys.stdout.buffer)
    else:
        with args.output.open("wb") as out:
            write_snapshot(spec, out)
        print(f"wrote {spec.nodes} nodes and {spec.pods} pods to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
