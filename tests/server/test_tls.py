"""Server TLS and client-certificate verification, over real sockets with real certificates."""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509

from extender.server import tls
from tests.pki import PKI, SERVICE_NAME, make_pki, make_pki_server_cert

BIND_CALLS = web.AppKey("bind_calls", list[str])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def _bind(request: web.Request) -> web.Response:
    request.app[BIND_CALLS].append(await request.text())
    return web.json_response({"Error": ""})


async def _serve(context: ssl.SSLContext) -> tuple[web.AppRunner, str, list[str]]:
    app = web.Application()
    calls: list[str] = []
    app[BIND_CALLS] = calls
    app.router.add_post("/bind", _bind)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"https://127.0.0.1:{port}/bind", calls


@pytest.fixture
async def mtls_server(pki: PKI) -> AsyncIterator[tuple[str, list[str]]]:
    context = tls.server_context(tls.TLSFiles(pki.server_cert, pki.server_key, pki.ca))
    runner, url, calls = await _serve(context)
    yield url, calls
    await runner.cleanup()


async def _post(url: str, context: ssl.SSLContext) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"PodName": "p"}, ssl=context) as response,
    ):
        await response.read()
        return response.status


async def test_client_with_cert_from_trusted_ca_is_served(
    pki: PKI, mtls_server: tuple[str, list[str]]
) -> None:
    """A client presenting a certificate signed by the client CA gets its answer."""
    url, calls = mtls_server
    status = await _post(url, pki.client_context(with_cert=pki.client_cert, key=pki.client_key))
    assert status == 200
    assert calls == ['{"PodName": "p"}']


async def test_client_without_cert_is_refused(pki: PKI, mtls_server: tuple[str, list[str]]) -> None:
    """Without a client certificate the connection fails and the handler never runs."""
    url, calls = mtls_server
    with pytest.raises(aiohttp.ClientError):
        await _post(url, pki.client_context())
    assert calls == []


async def test_client_with_cert_from_other_ca_is_refused(
    pki: PKI, mtls_server: tuple[str, list[str]]
) -> None:
    """A certificate from an untrusted CA is refused just like no certificate."""
    url, calls = mtls_server
    with pytest.raises(aiohttp.ClientError):
        await _post(url, pki.client_context(with_cert=pki.stranger_cert, key=pki.stranger_key))
    assert calls == []


async def test_plain_tls_serves_clients_without_certs(pki: PKI) -> None:
    """Without a client CA, any client that trusts the server certificate is served."""
    runner, url, calls = await _serve(
        tls.server_context(tls.TLSFiles(pki.server_cert, pki.server_key))
    )
    try:
        assert await _post(url, pki.client_context()) == 200
        assert len(calls) == 1
    finally:
        await runner.cleanup()


async def test_server_cert_is_checked_by_clients(pki: PKI) -> None:
    """A client that trusts another CA refuses our server: the certificate is really presented."""
    runner, url, calls = await _serve(
        tls.server_context(tls.TLSFiles(pki.server_cert, pki.server_key))
    )
    try:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await _post(url, ssl.create_default_context(cafile=str(pki.stranger_cert)))
        assert calls == []
    finally:
        await runner.cleanup()


def test_server_context_requires_tls12_and_client_certs(pki: PKI) -> None:
    """The context refuses TLS below 1.2 and, with a client CA, demands a client certificate."""
    context = tls.server_context(tls.TLSFiles(pki.server_cert, pki.server_key, pki.ca))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    plain = tls.server_context(tls.TLSFiles(pki.server_cert, pki.server_key))
    assert plain.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("missing-cert", "no such file"),
        ("missing-ca", "no such file"),
        ("mismatched-key", "cannot use certificate"),
        ("garbage-ca", "cannot read client CA bundle"),
    ],
)
def test_unusable_files_give_a_clear_error(
    pki: PKI, tmp_path: Path, which: str, message: str
) -> None:
    """Missing, mismatched or garbage files raise TLSConfigError naming the problem."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    files = {
        "missing-cert": tls.TLSFiles(tmp_path / "nope.crt", pki.server_key),
        "missing-ca": tls.TLSFiles(pki.server_cert, pki.server_key, tmp_path / "nope-ca.crt"),
        "mismatched-key": tls.TLSFiles(pki.server_cert, pki.client_key),
        "garbage-ca": tls.TLSFiles(pki.server_cert, pki.server_key, garbage),
    }[which]
    with pytest.raises(tls.TLSConfigError, match=message):
        tls.server_context(files)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], None),
        (["--tls-cert", "c.pem", "--tls-key", "k.pem"], tls.TLSFiles(Path("c.pem"), Path("k.pem"))),
        (
            ["--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem"],
            tls.TLSFiles(Path("c.pem"), Path("k.pem"), Path("ca.pem")),
        ),
        (["--tls-cert", "c.pem"], "go together"),
        (["--tls-client-ca", "ca.pem"], "needs --tls-cert"),
    ],
)
def test_flags_give_files_or_a_clear_error(
    argv: list[str], expected: tls.TLSFiles | str | None
) -> None:
    """The three TLS flags make a TLSFiles, None for plain HTTP, or say which flag is missing."""
    parser = argparse.ArgumentParser()
    tls.add_arguments(parser)
    args = parser.parse_args(argv)
    if isinstance(expected, str):
        with pytest.raises(tls.TLSConfigError, match=expected):
            tls.files_from_args(args)
    else:
        assert tls.files_from_args(args) == expected


async def _served_serial(port: int, pki: PKI) -> int:
    """The serial number of the certificate a fresh handshake gets."""
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=pki.client_context(), server_hostname=SERVICE_NAME
    )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()
        await writer.wait_closed()


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


async def test_renewed_certificate_is_served_without_restart(pki: PKI, tmp_path: Path) -> None:
    """After the files are replaced (a cert-manager renewal), new handshakes get the new cert."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(pki.server_cert.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    files = tls.TLSFiles(cert, key)
    context = tls.server_context(files)
    reloader = tls.CertificateReloader(context, files)
    runner, url, _ = await _serve(context)
    port = int(url.split(":")[2].split("/")[0])
    try:
        assert reloader.reload_if_changed() is False
        assert await _served_serial(port, pki) == _serial(pki.server_cert)

        renewed = make_pki_server_cert(pki, tmp_path / "renewed")
        # Like the kubelet: new files appear whole, by rename.
        for source, target in ((renewed[0], cert), (renewed[1], key)):
            staged = target.with_suffix(".new")
            staged.write_bytes(source.read_bytes())
            staged.replace(target)
        assert reloader.reload_if_changed() is True
        assert await _served_serial(port, pki) == _serial(renewed[0])
    finally:
        await runner.cleanup()


def test_broken_renewal_keeps_the_current_certificate(
    pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A renewed cert whose key does not match is not loaded; the old pair keeps serving."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(pki.server_cert.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    files = tls.TLSFiles(cert, key)
    reloader = tls.CertificateReloader(tls.server_context(files), files)
    staged = key.with_suffix(".new")
    staged.write_bytes(pki.client_key.read_bytes())
    staged.replace(key)
    with caplog.at_level(logging.WARNING):
        assert reloader.reload_if_changed() is False
    assert "keeping the current certificate" in caplog.text
