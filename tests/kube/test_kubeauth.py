"""Connection records from real kubeconfig files and service-account files, used over real TLS."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest

from extender.kube import kubeauth
from extender.kube.kubeapi import ApiStatusError, KubeApi
from extender.kube.kubeauth import Connection, KubeAuthError, load_connection
from extender.webhook import certs
from tests.fakeapi import FakeApiServer, Pki

EXEC_PLUGIN = """\
import json, pathlib, sys
directory = pathlib.Path(sys.argv[1])
calls = directory / "calls"
calls.write_text(str(int(calls.read_text() or 0) + 1) if calls.exists() else "1")
status = {"token": (directory / "token").read_text().strip()}
expiry = (directory / "expiry").read_text().strip()
if expiry:
    status["expirationTimestamp"] = expiry
print(json.dumps({
    "apiVersion": "client.authentication.k8s.io/v1",
    "kind": "ExecCredential",
    "status": status,
}))
"""


@pytest.fixture
async def tls_fake(tmp_path: Path) -> AsyncIterator[FakeApiServer]:
    """A fake API server over TLS with its own CA."""
    fake = FakeApiServer(token="secret-1", pki=Pki.create(tmp_path / "pki"))
    fake.put("nodes", {"metadata": {"name": "n1"}})
    await fake.start()
    yield fake
    await fake.stop()


async def list_nodes(connection: Connection) -> list[str]:
    """Names of the nodes, read through the real client."""
    async with KubeApi(connection) as api:
        items, _ = await api.list_all("/api/v1/nodes")
    return [item["metadata"]["name"] for item in items]


async def test_kubeconfig_with_token_and_ca(tls_fake: FakeApiServer, tmp_path: Path) -> None:
    """Server, CA and token come from the kubeconfig; the TLS handshake verifies the server."""
    path = tls_fake.write_kubeconfig(tmp_path / "config", token="secret-1")
    connection = load_connection(str(path))
    assert connection.server == tls_fake.url
    assert connection.ca_file is not None
    assert connection.verify_tls
    assert connection.credentials.authorization() == "Bearer secret-1"
    assert connection.source == f"kubeconfig {path}"
    assert await list_nodes(connection) == ["n1"]


async def test_kubeconfig_with_client_certificate(tls_fake: FakeApiServer, tmp_path: Path) -> None:
    """A client certificate authenticates without any Authorization header."""
    assert tls_fake.pki is not None
    cert = tls_fake.pki.issue_client("extender")
    path = tls_fake.write_kubeconfig(tmp_path / "config", client_cert=cert)
    connection = load_connection(str(path))
    assert connection.credentials.authorization() is None
    assert connection.client_cert_file == str(cert[0])
    assert await list_nodes(connection) == ["n1"]
    assert tls_fake.requests[-1].authorization is None


@pytest.mark.parametrize("how", ["files-in-place", "kubeconfig-rewritten"])
async def test_rotated_client_certificate_and_ca_bundle_are_used_without_a_restart(
    tls_fake: FakeApiServer, tmp_path: Path, how: str
) -> None:
    """The agent's node patch works across a client-CA rotation and a serving-CA rotation."""
    pki = tls_fake.pki
    assert pki is not None
    path = tls_fake.write_kubeconfig(tmp_path / "config", client_cert=pki.issue_client("agent"))
    patch = {"metadata": {"annotations": {"rotation": "1"}}}
    async with KubeApi(load_connection(str(path))) as api:
        await api.patch_node_metadata("n1", patch)
        new_ca = certs.new_authority("fake-client-ca-2", days=2)
        tls_fake.trust_client_ca(new_ca)
        if how == "files-in-place":
            pki.issue_client("agent", authority=new_ca)
        else:
            new_pair = pki.issue_client("agent", authority=new_ca, name="agent-2")
            tls_fake.write_kubeconfig(path, client_cert=new_pair)
        await api.patch_node_metadata("n1", {"metadata": {"annotations": {"rotation": "2"}}})
        await tls_fake.rotate_serving_ca()
        await api.patch_node_metadata("n1", {"metadata": {"annotations": {"rotation": "3"}}})
        assert api.connection.credentials.reloads >= 2
    assert tls_fake.get("nodes", "n1")["metadata"]["annotations"] == {"rotation": "3"}


def test_a_pair_caught_mid_rotation_keeps_the_previous_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A certificate rewritten before its key: the old pair stays in use until both match."""
    monkeypatch.setattr(kubeauth, "RECHECK_SECONDS", 0.0)
    pki = Pki.create(tmp_path / "pki")
    fake = FakeApiServer(pki=pki)
    fake.port = 6443
    cert, key = pki.issue_client("agent")
    credentials = load_connection(
        str(fake.write_kubeconfig(tmp_path / "config", client_cert=(cert, key)))
    ).credentials
    before = credentials.current().ssl
    assert before is not None
    new_cert, new_key = pki.issue_client("agent", name="agent-next")
    cert.write_bytes(new_cert.read_bytes())
    assert credentials.current().ssl is before
    assert credentials.reloads == 0
    key.write_bytes(new_key.read_bytes())
    assert credentials.current().ssl is not before
    assert credentials.reloads == 1


def write_plugin(directory: Path, token: str, expiry: str) -> list[str]:
    """An exec credential plugin whose token and expiry the test controls through files."""
    directory.mkdir(exist_ok=True)
    (directory / "plugin.py").write_text(EXEC_PLUGIN)
    (directory / "token").write_text(token)
    (directory / "expiry").write_text(expiry)
    return [sys.executable, str(directory / "plugin.py"), str(directory)]


async def test_exec_plugin_token_is_refreshed_after_expiry(
    tls_fake: FakeApiServer, tmp_path: Path
) -> None:
    """An expiring exec token is fetched again from the plugin, without reloading anything."""
    soon = (datetime.now(UTC) + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    command = write_plugin(tmp_path / "plugin", "secret-1", soon)
    path = tls_fake.write_kubeconfig(tmp_path / "config", exec_command=command)
    connection = load_connection(str(path))
    assert await list_nodes(connection) == ["n1"]
    tls_fake.rotate_token("secret-2")
    (tmp_path / "plugin" / "token").write_text("secret-2")
    sent = len(tls_fake.requests)
    # Within the loader's 5-minute skew the token counts as expired: the plugin runs again.
    assert await list_nodes(connection) == ["n1"]
    assert [r.authorization for r in tls_fake.requests[sent:]] == ["Bearer secret-2"]


async def test_exec_plugin_without_expiry_is_rerun_on_401(
    tls_fake: FakeApiServer, tmp_path: Path
) -> None:
    """A token with no expiry that the server stops accepting is replaced after one 401."""
    command = write_plugin(tmp_path / "plugin", "secret-1", "")
    path = tls_fake.write_kubeconfig(tmp_path / "config", exec_command=command)
    connection = load_connection(str(path))
    assert await list_nodes(connection) == ["n1"]
    calls_before = int((tmp_path / "plugin" / "calls").read_text())
    tls_fake.rotate_token("secret-2")
    (tmp_path / "plugin" / "token").write_text("secret-2")
    assert await list_nodes(connection) == ["n1"]
    assert int((tmp_path / "plugin" / "calls").read_text()) == calls_before + 1
    assert [r.authorization for r in tls_fake.requests[-2:]] == [
        "Bearer secret-1",
        "Bearer secret-2",
    ]


async def test_in_cluster_service_account_and_rotated_token_file(
    tls_fake: FakeApiServer, tmp_path: Path
) -> None:
    """In a pod: env + token file + CA; a rotated token file is picked up after a 401."""
    assert tls_fake.pki is not None
    token_file = tmp_path / "token"
    token_file.write_text("secret-1")
    environ = {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(tls_fake.port),
    }
    connection = load_connection(
        environ=environ, token_file=str(token_file), ca_file=str(tls_fake.pki.ca_cert)
    )
    assert connection.server == tls_fake.url
    assert connection.source.startswith("in-cluster service account")
    assert await list_nodes(connection) == ["n1"]
    tls_fake.rotate_token("secret-2")
    token_file.write_text("secret-2")
    assert await list_nodes(connection) == ["n1"]
    assert tls_fake.requests[-1].authorization == "bearer secret-2"


async def test_wrong_token_surfaces_as_401(tls_fake: FakeApiServer, tmp_path: Path) -> None:
    """A token the server never accepts fails with a typed error carrying the status."""
    path = tls_fake.write_kubeconfig(tmp_path / "config", token="wrong")
    with pytest.raises(ApiStatusError) as caught:
        await list_nodes(load_connection(str(path)))
    assert caught.value.status == 401


def test_explicit_kubeconfig_wins_over_in_cluster(tmp_path: Path) -> None:
    """--kubeconfig is used even inside a pod; without it the service account is."""
    fake = FakeApiServer()
    fake.port = 6443
    path = fake.write_kubeconfig(tmp_path / "config", token="t")
    token_file = tmp_path / "token"
    token_file.write_text("sa-token")
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text("not checked until a connection is made\n")
    environ = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    in_pod = partial(
        load_connection, environ=environ, token_file=str(token_file), ca_file=str(ca_file)
    )
    assert in_pod(str(path)).server == "http://127.0.0.1:6443"
    assert in_pod().server == "https://10.0.0.1:443"
    kubeconfig_env = {"KUBECONFIG": str(path)}
    assert load_connection(environ=kubeconfig_env).server == "http://127.0.0.1:6443"


@pytest.mark.parametrize(
    ("content", "context", "message"),
    [
        (None, None, "no such file"),
        ("a: [unclosed", None, "kubeconfig"),
        ("apiVersion: v1\nkind: Config\n", None, "kubeconfig"),
        ("USE-FAKE", "missing", "missing"),
    ],
)
def test_bad_kubeconfig_is_a_clear_error(
    tmp_path: Path, content: str | None, context: str | None, message: str
) -> None:
    """Missing files, bad YAML, empty configs and unknown contexts raise KubeAuthError."""
    path = tmp_path / "config"
    if content == "USE-FAKE":
        FakeApiServer().write_kubeconfig(path, token="t")
    elif content is not None:
        path.write_text(content)
    with pytest.raises(KubeAuthError) as caught:
        load_connection(str(path), context, environ={})
    assert message in str(caught.value)
    assert str(path) in str(caught.value)
