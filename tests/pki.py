"""Certificates made fresh for a test run: a CA, a serving cert for 127.0.0.1, client certs."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from extender.webhook import certs

SERVICE_NAME = "hostport-extender-webhook.hostport-system.svc"


@dataclass(frozen=True, slots=True)
class PKI:
    """Files of one CA and the certificates it issued, plus a second, untrusted CA's client."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path

    def client_context(
        self, *, with_cert: Path | None = None, key: Path | None = None
    ) -> ssl.SSLContext:
        """A client context trusting our CA and checking the server name; optionally with a cert."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if with_cert is not None and key is not None:
            context.load_cert_chain(str(with_cert), str(key))
        return context


def make_pki(directory: Path) -> PKI:
    """Write a CA, a server cert for the webhook names and 127.0.0.1, and two client certs."""
    authority = certs.new_authority("test CA")
    stranger = certs.new_authority("some other CA")
    server = certs.issue(
        authority,
        SERVICE_NAME,
        dns_names=certs.service_dns_names("hostport-extender-webhook", "hostport-system"),
        ip_addresses=["127.0.0.1"],
    )
    client = certs.issue(authority, "kube-scheduler", client=True)
    foreign = certs.issue(stranger, "kube-scheduler", client=True)
    files = {
        "ca.crt": authority.cert_pem,
        "server.crt": server.cert_pem,
        "server.key": server.key_pem,
        "client.crt": client.cert_pem,
        "client.key": client.key_pem,
        "stranger.crt": foreign.cert_pem,
        "stranger.key": foreign.key_pem,
    }
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return PKI(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        stranger_cert=directory / "stranger.crt",
        stranger_key=directory / "stranger.key",
    )


def make_pki_server_cert(pki: PKI, directory: Path) -> tuple[Path, Path]:
    """A second serving cert for the same names, from a fresh CA trusted alongside the first.

    Written to `directory`; the new CA is appended to `pki.ca` so clients trust both.
    """
    directory.mkdir(parents=True, exist_ok=True)
    authority = certs.new_authority("renewal CA")
    server = certs.issue(
        authority,
        SERVICE_NAME,
        dns_names=certs.service_dns_names("hostport-extender-webhook", "hostport-system"),
        ip_addresses=["127.0.0.1"],
    )
    (directory / "tls.crt").write_bytes(server.cert_pem)
    (directory / "tls.key").write_bytes(server.key_pem)
    with pki.ca.open("ab") as bundle:
        bundle.write(authority.cert_pem)
    return directory / "tls.crt", directory / "tls.key"
