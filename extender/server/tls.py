"""Server-side TLS for the extender and the webhook: certificate, key and optional client CA.

The scheduler talks to the extender over loopback by default; once the extender is reachable
beyond loopback, anyone who can reach it could ask it to bind pods. Client-certificate
verification (the scheduler's `tlsConfig.certFile/keyFile`) closes that. Imports no aiohttp, so
both `serve` and `webhook` build their contexts the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from extender.errors import ExtenderError

log = logging.getLogger(__name__)


class TLSConfigError(ExtenderError):
    """Certificate, key or CA files that cannot be used; the message names the file."""


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """Where the serving certificate, its key and (optionally) the client CA bundle live."""

    cert: Path
    key: Path
    client_ca: Path | None = None


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """A TLS 1.2+ server context; with `client_ca`, clients need a certificate it signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for path in (files.cert, files.key):
        _require_file(path)
    try:
        context.load_cert_chain(certfile=str(files.cert), keyfile=str(files.key))
    except ssl.SSLError as error:
        raise TLSConfigError(
            f"cannot use certificate {files.cert} with key {files.key}: {error.reason or error}"
        ) from error
    if files.client_ca is not None:
        _require_file(files.client_ca)
        try:
            context.load_verify_locations(cafile=str(files.client_ca))
        except ssl.SSLError as error:
            raise TLSConfigError(
                f"cannot read client CA bundle {files.client_ca}: {error.reason or error}"
            ) from error
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class CertificateReloader:
    """Loads a renewed certificate and key into a live server context.

    cert-manager renews the webhook's Secret and the kubelet swaps the mounted files; new TLS
    handshakes must then present the new certificate without a restart. A renewal that cannot
    be loaded (a half-written pair, a key that does not match) keeps the old one serving.
    """

    def __init__(self, context: ssl.SSLContext, files: TLSFiles) -> None:
        self._context = context
        self._files = files
        self._stamp = self._current_stamp()

    def _current_stamp(self) -> tuple[tuple[int, int, int], ...]:
        # Secret volumes replace files through a symlink swap: stat() follows it, so a new
        # inode or mtime shows up here.
        stamps = []
        for path in (self._files.cert, self._files.key):
            try:
                status = path.stat()
            except OSError:
                stamps.append((0, 0, 0))
            else:
                stamps.append((status.st_ino, status.st_mtime_ns, status.st_size))
        return tuple(stamps)

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed since the last load; True when it did."""
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return False
        try:
            self._context.load_cert_chain(str(self._files.cert), str(self._files.key))
        except (OSError, ssl.SSLError) as error:
            log.warning(
                "keeping the current certificate: cannot load %s with %s: %s",
                self._files.cert,
                self._files.key,
                error,
            )
            return False
        self._stamp = stamp
        log.info("loaded renewed certificate %s", self._files.cert)
        return True

    async def watch(self, interval: float) -> None:
        """Check for renewed files every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()


def _require_file(path: Path) -> None:
    # ssl's own message for a missing file is a bare "[Errno 2]" without the name.
    if not path.is_file():
        raise TLSConfigError(f"{path}: no such file")


def add_arguments(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """Add `--tls-cert --tls-key --tls-client-ca` to a subcommand's parser."""
    group = parser.add_argument_group("TLS")
    group.add_argument(
        "--tls-cert", type=Path, required=required, help="PEM serving certificate (chain)"
    )
    group.add_argument("--tls-key", type=Path, required=required, help="PEM private key")
    group.add_argument(
        "--tls-client-ca",
        type=Path,
        help="PEM CA bundle; when given, clients must present a certificate it signed",
    )


def files_from_args(args: argparse.Namespace) -> TLSFiles | None:
    """The TLS files the flags name, None for plain HTTP; TLSConfigError for half a pair."""
    cert: Path | None = args.tls_cert
    key: Path | None = args.tls_key
    client_ca: Path | None = args.tls_client_ca
    if cert is None and key is None:
        if client_ca is not None:
            raise TLSConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise TLSConfigError("--tls-cert and --tls-key go together")
    return TLSFiles(cert=cert, key=key, client_ca=client_ca)
