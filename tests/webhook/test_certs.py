"""`hostport-extender certs`: the files it writes are usable by the API server and the scheduler."""

from __future__ import annotations

import argparse
import base64
import json
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from extender.server import tls
from extender.webhook import certs_command as certs_cli


def run_certs(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="hostport-extender")
    certs_cli.add_parser(parser.add_subparsers(required=True))
    args = parser.parse_args(["certs", *argv])
    status: int = args.run(args)
    return status


def test_writes_a_serving_cert_for_the_webhook_service(tmp_path: Path) -> None:
    """The serving cert names every form of the Service's DNS name and chains to ca.crt."""
    assert run_certs("--out-dir", str(tmp_path), "--namespace", "ops") == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [
        "hostport-extender-webhook",
        "hostport-extender-webhook.ops",
        "hostport-extender-webhook.ops.svc",
        "hostport-extender-webhook.ops.svc.cluster.local",
    ]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "tls.crt")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    # The pair loads into the same server context the webhook uses.
    tls.server_context(tls.TLSFiles(tmp_path / "tls.crt", tmp_path / "tls.key"))


def test_keys_are_private_and_the_ca_key_is_not_written(tmp_path: Path) -> None:
    """Key files are 0600; no CA key is left on disk to mint more certificates with."""
    assert run_certs("--out-dir", str(tmp_path), "--client-cert", "kube-scheduler") == 0
    for name in ("tls.key", "client.key", "secret.yaml"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "ca.crt",
        "cabundle-patch.json",
        "client.crt",
        "client.key",
        "secret.yaml",
        "tls.crt",
        "tls.key",
    ]
    client = x509.load_pem_x509_certificate((tmp_path / "client.crt").read_bytes())
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_secret_and_cabundle_patch_carry_the_written_pems(tmp_path: Path) -> None:
    """secret.yaml is a kubernetes.io/tls Secret and the patch sets caBundle to ca.crt."""
    assert run_certs("--out-dir", str(tmp_path), "--secret-name", "wh-tls") == 0
    secret = yaml.safe_load((tmp_path / "secret.yaml").read_text())
    assert secret["kind"] == "Secret"
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"] == {"name": "wh-tls", "namespace": "hostport-system"}
    for key, name in (("tls.crt", "tls.crt"), ("tls.key", "tls.key"), ("ca.crt", "ca.crt")):
        assert base64.b64decode(secret["data"][key]) == (tmp_path / name).read_bytes()
    patch = json.loads((tmp_path / "cabundle-patch.json").read_text())
    assert patch == [
        {
            "op": "add",
            "path": "/webhooks/0/clientConfig/caBundle",
            "value": base64.b64encode((tmp_path / "ca.crt").read_bytes()).decode(),
        }
    ]


def test_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second run keeps the existing CA unless --force is given."""
    assert run_certs("--out-dir", str(tmp_path)) == 0
    first = (tmp_path / "ca.crt").read_bytes()
    capsys.readouterr()
    assert run_certs("--out-dir", str(tmp_path)) == 1
    assert "already exist (use --force to replace)" in capsys.readouterr().err
    assert (tmp_path / "ca.crt").read_bytes() == first
    assert run_certs("--out-dir", str(tmp_path), "--force") == 0
    assert (tmp_path / "ca.crt").read_bytes() != first


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad IP or validity gives status 1 and one line on stderr."""
    assert run_certs("--out-dir", str(tmp_path), "--ip", "not-an-ip") == 1
    assert "not-an-ip" in capsys.readouterr().err
    assert run_certs("--out-dir", str(tmp_path), "--days", "0") == 1
    assert capsys.readouterr().err.strip() == (
        "hostport-extender certs: error: --days must be at least 1, got 0"
    )
