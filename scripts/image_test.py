"""`make image-test`: run the built image as Kubernetes runs it, check each command answers.

Every container runs as uid/gid 65532 with a read-only root filesystem, no capabilities,
no-new-privileges and `--network=none` (its own network namespace, loopback only). The HTTP
clients run inside the containers' namespaces (`podman exec` with the image's own Python), so
nothing listens outside them. Checks, in order:

- `serve --snapshot config/samples/cluster.yaml` (the sample is in the image): /filter with the
  sample request rejects the four nodes the README names and passes ip-10-0-1-14; /healthz,
  /readyz and /metrics answer on the verbs and the ops port; SIGTERM stops it with exit 0;
- `agent --once` in the extender's network namespace lists its two listeners;
- `certs` writes a CA and a serving certificate into a volume; `webhook` serves with them and
  routes a host-port pod's AdmissionReview over HTTPS, verified against that CA by the
  Service's DNS name; its /metrics counts the decision.

Prints the figures: image size, start to ready (median of 3 starts of `serve`, from `podman run`
to the line printed once both ports listen) against the same `serve` started outside a container
in the same run (median of 3), the webhook's start to ready.
Environment: IMAGE (default localhost/hostport-extender:VERSION), CACHE (as scripts/image-build).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
VERSION = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)
IMAGE = os.environ.get("IMAGE") or f"localhost/hostport-extender:{VERSION[1] if VERSION else '0'}"
CACHE = Path(
    os.environ.get("CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hostport-extender"
)
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs"]
AS_KUBERNETES = [
    "--user=65532:65532",
    "--read-only",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
]
SERVICE = "hostport-extender-webhook.hostport-system.svc"
TLS = "/etc/hostport-extender/tls"
PREFIX = f"hostport-image-test-{os.getpid()}"

CLIENT = r"""
import json, ssl, sys, urllib.error, urllib.request
requests = json.loads(sys.argv[1])
context = ssl.create_default_context(cafile=sys.argv[2]) if len(sys.argv) > 2 else None
answers = []
for method, url, body in requests:
    data = open(body, "rb").read() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            answers.append([response.status, response.read().decode()])
    except urllib.error.HTTPError as error:
        answers.append([error.code, error.read().decode()])
print(json.dumps(answers))
"""


def podman(*argv: str, check: bool = True, **options: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PODMAN, *argv], capture_output=True, text=True, timeout=120, check=check, **options
    )


def lines_of(stream: IO[str]) -> queue.Queue[str]:
    """The lines of `stream` as they arrive, read by a thread ("" at the end)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_for_line(stream: IO[str], pattern: str, timeout: float = 60.0) -> str:
    """Read `stream` until a line matches `pattern`; fail after `timeout` seconds."""
    lines = lines_of(stream)
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no line matching {pattern!r} within {timeout} s; got {seen!r}")


def run_detached(name: str, *argv: str, options: list[str]) -> subprocess.Popen[str]:
    """`podman run` in the foreground of a child process (its stdout/stderr are the container's)."""
    return subprocess.Popen(
        [*PODMAN, "run", "--rm", f"--name={name}", *AS_KUBERNETES, *options, IMAGE, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(name: str, process: subprocess.Popen[str]) -> int:
    """SIGTERM the container (podman stop), and return the exit code it ended with."""
    podman("stop", "--time=10", name, check=False)
    return process.wait(timeout=30)


def inside(name: str, requests: list[tuple[str, str, str | None]], *ca: str) -> list[Any]:
    """HTTP requests made from inside container `name` (its network namespace, its Python)."""
    result = podman("exec", name, "python", "-c", CLIENT, json.dumps(requests), *ca)
    answers: list[Any] = json.loads(result.stdout)
    return answers


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)
    print(f"  ok: {what}")


def start_serve(name: str) -> tuple[subprocess.Popen[str], float]:
    """`serve --snapshot` of the sample as container `name` (verbs on 8888, ops on 9090);
    returns it once both ports listen, with the seconds from `podman run` to then."""
    started = time.monotonic()
    process = run_detached(
        name,
        "serve",
        "--snapshot=config/samples/cluster.yaml",
        "--listen=127.0.0.1:8888",
        "--ops-listen=127.0.0.1:9090",
        options=["--network=none"],
    )
    try:
        assert process.stdout is not None
        wait_for_line(process.stdout, r"health, readiness and metrics on http://127\.0\.0\.1:9090")
    except BaseException:
        stop(name, process)
        raise
    return process, time.monotonic() - started


def test_serve() -> float:
    """The extender over the bundled sample; returns its start-to-ready seconds."""
    name = f"{PREFIX}-serve"
    process, ready = start_serve(name)
    try:
        answers = inside(
            name,
            [
                (
                    "POST",
                    "http://127.0.0.1:8888/filter",
                    "config/samples/filter-pod-identity-agent.json",
                ),
                ("GET", "http://127.0.0.1:8888/healthz", None),
                ("GET", "http://127.0.0.1:9090/healthz", None),
                ("GET", "http://127.0.0.1:9090/readyz", None),
                ("GET", "http://127.0.0.1:9090/metrics", None),
            ],
        )
        (status, body), healthz, ops_healthz, readyz, (metrics_status, metrics) = answers
        filtered = json.loads(body)
        check(status == 200, "serve: POST /filter answers 200")
        check(
            filtered["NodeNames"] == ["ip-10-0-1-14.ec2.internal"],
            "serve: the sample pod passes only ip-10-0-1-14",
        )
        rejected = filtered["FailedAndUnresolvableNodes"]
        check(
            sorted(rejected) == [f"ip-10-0-1-1{i}.ec2.internal" for i in (1, 2, 3, 5)]
            and rejected["ip-10-0-1-11.ec2.internal"]
            == "80/TCP on every address held by hostPort pods of Deployment "
            "ingress-nginx/ingress-nginx-controller",
            "serve: the expected rejection (ingress-nginx holds 80 on ip-10-0-1-11, ...)",
        )
        check(healthz[0] == 200 and ops_healthz[0] == 200, "serve: /healthz on both ports")
        check(readyz[0] == 200, "serve: /readyz on the ops port")
        check(
            metrics_status == 200
            and 'hostport_extender_filter_rejections_total{reason="hostPort"}' in metrics
            and "hostport_extender_ready 1.0" in metrics,
            "serve: /metrics counts the rejections and reports ready",
        )
        test_agent(name)
    finally:
        code = stop(name, process)
    check(code == 0, "serve: SIGTERM stops it with exit code 0")
    return ready


def test_agent(serve_name: str) -> None:
    """`agent --once` in the extender's network namespace sees its two listeners."""
    result = podman(
        "run", "--rm", *AS_KUBERNETES, f"--network=container:{serve_name}", IMAGE, "agent", "--once"
    )
    listeners = {(s["port"], s["protocol"], s["ip"]) for s in json.loads(result.stdout)}
    check(
        {(8888, "TCP", "127.0.0.1"), (9090, "TCP", "127.0.0.1")} <= listeners,
        "agent --once: lists 127.0.0.1:8888 and :9090 (the extender's) in that namespace",
    )


def start_to_ready() -> float:
    """One more start of `serve`, timed from `podman run` to both ports listening."""
    name = f"{PREFIX}-timing"
    process, ready = start_serve(name)
    stop(name, process)
    return ready


def native_start_to_ready() -> float:
    """The baseline: the same `serve` started outside a container, from the checkout's venv."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "extender", "serve", "--snapshot=config/samples/cluster.yaml",
         "--listen=127.0.0.1:0", "--ops-listen=127.0.0.1:0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        wait_for_line(process.stdout, r"health, readiness and metrics on")
        return time.monotonic() - started
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_webhook() -> float:
    """`certs` then `webhook` with those certs; returns the webhook's start-to-ready seconds."""
    directory = Path(tempfile.mkdtemp(prefix="hostport-image-test-"))
    try:
        os.chown(directory, 65532, 65532)
        podman(
            "run", "--rm", *AS_KUBERNETES, "--network=none", f"--volume={directory}:/certs",
            IMAGE, "certs", "--out-dir=/certs",
        )  # fmt: skip
        written = sorted(p.name for p in directory.iterdir())
        check(
            {"ca.crt", "tls.crt", "tls.key", "secret.yaml"} <= set(written),
            f"certs: wrote {', '.join(written)}",
        )
        name = f"{PREFIX}-webhook"
        started = time.monotonic()
        process = run_detached(
            name,
            "webhook",
            "--listen=127.0.0.1:8443",
            f"--tls-cert={TLS}/tls.crt",
            f"--tls-key={TLS}/tls.key",
            "--log-format=json",
            # No API server here: routing waits for the scheduler's Lease, so it is off; the
            # preemption guard needs none and is checked instead.
            "--scheduler-lease=none",
            options=[
                "--network=none",
                f"--add-host={SERVICE}:127.0.0.1",
                f"--volume={directory}:{TLS}:ro",
            ],
        )
        try:
            assert process.stderr is not None
            wait_for_line(process.stderr, r"webhook listening on https://")
            ready = time.monotonic() - started
            review = {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "apps",
                    "operation": "CREATE",
                    "userInfo": {
                        "username": "system:serviceaccount:kube-system:replicaset-controller"
                    },
                    "object": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {"generateName": "web-", "namespace": "apps"},
                        "spec": {
                            "schedulerName": "default-scheduler",
                            "containers": [
                                {
                                    "name": "app",
                                    "image": "nginx",
                                    "ports": [
                                        {"containerPort": 8080, "hostPort": 80, "protocol": "TCP"}
                                    ],
                                }
                            ],
                        },
                    },
                    "dryRun": False,
                },
            }
            deletion = {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": "705ab4f5-6393-11e8-b7cc-42010a800003",
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "ingress-nginx",
                    "name": "ingress-nginx-controller-4xkq2",
                    "operation": "DELETE",
                    "userInfo": {"username": "system:kube-scheduler"},
                    "object": None,
                    "oldObject": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {
                            "name": "ingress-nginx-controller-4xkq2",
                            "namespace": "ingress-nginx",
                            "annotations": {"hostports.dev/protected": "true"},
                        },
                        "spec": {
                            "containers": [
                                {
                                    "name": "controller",
                                    "image": "ingress-nginx",
                                    "ports": [{"containerPort": 80, "hostPort": 80}],
                                }
                            ]
                        },
                    },
                    "dryRun": False,
                },
            }
            (directory / "review.json").write_text(json.dumps(review))
            (directory / "deletion.json").write_text(json.dumps(deletion))
            base = f"https://{SERVICE}:8443"
            answers = inside(
                name,
                [
                    ("POST", f"{base}/mutate", f"{TLS}/review.json"),
                    ("POST", f"{base}/validate", f"{TLS}/deletion.json"),
                    ("GET", f"{base}/healthz", None),
                    ("GET", f"{base}/metrics", None),
                ],
                f"{TLS}/ca.crt",
            )
            (status, body), (guard_status, guard_body), healthz, (_, metrics) = answers
            response = json.loads(body)["response"]
            check(
                status == 200 and response["allowed"],
                "webhook: answers the review over HTTPS (CA and name verified), admitting the pod",
            )
            patch = json.loads(base64.b64decode(response.get("patch") or "W10="))
            check(
                not any(op["path"] == "/spec/schedulerName" for op in patch),
                "webhook: without the scheduler's Lease the pod stays with the default scheduler",
            )
            guard = json.loads(guard_body)["response"]
            check(
                guard_status == 200
                and guard["allowed"] is False
                and "ingress-nginx-controller-4xkq2" in guard["status"]["message"],
                "webhook: /validate refuses the scheduler's DELETE of a protected pod, naming it",
            )
            check(healthz[0] == 200, "webhook: /healthz")
            check(
                'hostport_extender_admission_reviews_total{decision="scheduler-lease-missing"} 1.0'
                in metrics,
                "webhook: /metrics counts the review left unrouted",
            )
        finally:
            code = stop(name, process)
        check(code == 0, "webhook: SIGTERM stops it with exit code 0")
        return ready
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> int:
    CACHE.mkdir(parents=True, exist_ok=True)
    conf = CACHE / "containers.conf"
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    os.environ["CONTAINERS_CONF"] = str(conf)
    inspected = podman("image", "inspect", "--format={{.Size}}", IMAGE, check=False)
    if inspected.returncode != 0:
        print(f"image-test: no image {IMAGE}: run `make image` first", file=sys.stderr)
        return 2
    size = int(inspected.stdout.strip())
    print(f"image-test: {IMAGE}, {size / 1e6:.0f} MB")
    try:
        first = test_serve()
        webhook_ready = test_webhook()
        timings = [first, start_to_ready(), start_to_ready()]
        native = [native_start_to_ready() for _ in range(3)]
    except (AssertionError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or ""
        print(f"image-test: FAILED: {error} {detail}".rstrip(), file=sys.stderr)
        return 1
    print(
        f"image-test: passed; image {size / 1e6:.0f} MB; serve start to ready "
        f"{statistics.median(timings):.2f} s (median of {', '.join(f'{t:.2f}' for t in timings)}; "
        f"outside a container {statistics.median(native):.2f} s, ratio "
        f"{statistics.median(timings) / statistics.median(native):.1f}); "
        f"webhook start to ready {webhook_ready:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
