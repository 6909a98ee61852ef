"""`hostport-extender certs`: write a CA, a webhook serving cert and the objects that install them.

For clusters without cert-manager. Writes into one directory:
ca.crt, tls.crt, tls.key, secret.yaml (a kubernetes.io/tls Secret for the webhook) and
cabundle-patch.json (a JSON patch for the MutatingWebhookConfiguration's caBundle); with
`--client-cert NAME` also client.crt/client.key for the scheduler's `tlsConfig`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml

from extender.webhook import certs

DEFAULT_SERVICE = "hostport-extender-webhook"
DEFAULT_NAMESPACE = "hostport-system"
DEFAULT_SECRET = "hostport-extender-webhook-tls"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the `certs` subcommand; `args.run(args)` runs it and returns the exit status."""
    parser = subparsers.add_parser(
        "certs",
        help="generate a CA and webhook serving certificate (clusters without cert-manager)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument("--out-dir", type=Path, required=True, help="directory to write into")
    parser.add_argument("--service", default=DEFAULT_SERVICE, help="webhook Service name")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="webhook namespace")
    parser.add_argument("--secret-name", default=DEFAULT_SECRET, help="name of the TLS Secret")
    parser.add_argument(
        "--dns", action="append", default=[], help="extra DNS name for the serving cert"
    )
    parser.add_argument(
        "--ip", action="append", default=[], help="extra IP address for the serving cert"
    )
    parser.add_argument(
        "--client-cert",
        metavar="NAME",
        help="also issue a client certificate with this common name (scheduler tlsConfig)",
    )
    parser.add_argument("--days", type=int, default=certs.DEFAULT_DAYS, help="validity in days")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Generate and write everything; a clear one-line error and status 1 on failure."""
    try:
        written = write_bundle(args)
    except (OSError, ValueError) as error:
        print(f"hostport-extender certs: error: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def write_bundle(args: argparse.Namespace) -> list[Path]:
    """Create the files; never overwrites without `--force`, so a CA is not lost by accident."""
    if args.days < 1:
        raise ValueError(f"--days must be at least 1, got {args.days}")
    out: Path = args.out_dir
    names = ["ca.crt", "tls.crt", "tls.key", "secret.yaml", "cabundle-patch.json"]
    if args.client_cert:
        names += ["client.crt", "client.key"]
    existing = [name for name in names if (out / name).exists()]
    if existing and not args.force:
        raise ValueError(f"{out}: {', '.join(existing)} already exist (use --force to replace)")

    authority = certs.new_authority(f"hostport-extender CA ({args.namespace})", days=args.days)
    dns_names = [*certs.service_dns_names(args.service, args.namespace), *args.dns]
    serving = certs.issue(
        authority,
        f"{args.service}.{args.namespace}.svc",
        dns_names=dns_names,
        ip_addresses=args.ip,
        days=args.days,
    )
    secret = certs.tls_secret(args.secret_name, args.namespace, serving, authority.cert_pem)
    files: dict[str, tuple[bytes, int]] = {
        "ca.crt": (authority.cert_pem, 0o644),
        "tls.crt": (serving.cert_pem, 0o644),
        "tls.key": (serving.key_pem, 0o600),
        "secret.yaml": (_yaml(secret), 0o600),
        "cabundle-patch.json": (orjson.dumps(certs.ca_bundle_patch(authority.cert_pem)), 0o644),
    }
    if args.client_cert:
        client = certs.issue(authority, args.client_cert, client=True, days=args.days)
        files["client.crt"] = (client.cert_pem, 0o644)
        files["client.key"] = (client.key_pem, 0o600)

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (content, mode) in files.items():
        path = out / name
        # Open with the final mode so a key is never readable by others, not even briefly.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
        os.chmod(path, mode)
        written.append(path)
    return written


def _yaml(document: dict[str, Any]) -> bytes:
    return yaml.safe_dump(document, sort_keys=False).encode()
