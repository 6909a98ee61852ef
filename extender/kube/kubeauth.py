"""Where the API server is and how to authenticate to it: the only importer of `kubernetes`.

The official client is used for what it does well and we must not re-implement: kubeconfig
parsing and merging, contexts, exec credential plugins (`aws eks get-token`, ...), client
certificates, in-cluster service-account files. Its HTTP machinery and model objects are not used:
the result is a small `Connection` record that extender/kube/kubeapi.py turns into aiohttp requests.

Credentials rotate (bound service-account tokens about hourly, exec plugin tokens on expiry,
client certificates and CA bundles when an operator or cert-manager renews them), so the record
carries a `Credentials` object rather than a token or a TLS context. Its methods may block (an
exec plugin is a subprocess, the rest are files): call them from a worker thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from kubernetes.client import Configuration
from kubernetes.config import list_kube_config_contexts, load_kube_config
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_HOST_ENV_NAME,
    SERVICE_TOKEN_FILENAME,
    InClusterConfigLoader,
)

from extender.errors import ExtenderError

DEFAULT_KUBECONFIG = "~/.kube/config"
RECHECK_SECONDS = 1.0
"""How often, at most, the files the credentials came from are read again to look for changes."""

log = logging.getLogger(__name__)


class KubeAuthError(ExtenderError):
    """No usable cluster configuration; the message says which source was tried and why."""


@dataclass(frozen=True, slots=True)
class RequestAuth:
    """What one request needs: the Authorization header value and the TLS context to connect."""

    authorization: str | None
    """`Bearer <token>` (or `Basic ...`), or None when the user authenticates by certificate."""
    ssl: ssl.SSLContext | None
    """CA bundle and client certificate as currently on disk; None for a plain-HTTP server."""
    server_name: str | None


FileStamp = tuple[tuple[str, bytes | None], ...]
"""Each file the credentials came from, with a digest of its content (None: unreadable)."""


class Credentials:
    """The current credentials of every kind, reloaded the way kubectl would reload them.

    `current()` runs the loader's own refresh hook (it re-runs an exec plugin once its token has
    expired and re-reads a service-account token file at most once a minute) and, at most once
    a second, reads the files the configuration came from (the kubeconfig, the client
    certificate and key, the CA bundle, the in-cluster token and CA): when one changed it
    reloads everything and builds a new TLS context, so new connections use the new pair.
    `refresh()` reloads unconditionally; the API client calls it after a 401 or a TLS failure,
    which is how a revoked exec token (or a certificate an exec plugin hands out) is replaced.
    A reload that fails mid-rotation (a key that does not match its certificate yet) keeps the
    previous credentials and is tried again on the next check.
    """

    def __init__(
        self,
        load: Callable[[], Configuration],
        initial: Configuration,
        sources: tuple[str, ...],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._sources = sources
        self._clock = clock
        self._lock = threading.Lock()
        self._config = initial
        self._stamp = self._files_stamp(initial)
        self._ssl: ssl.SSLContext | None = None
        self._ssl_built = False  # built at first use: a bad CA file fails a request, not startup
        self._checked_at = clock()
        self.reloads = 0
        """How many times a change on disk or a refresh replaced the credentials."""

    def authorization(self) -> str | None:
        """The current Authorization header value (see `current()`)."""
        return self.current().authorization

    def current(self) -> RequestAuth:
        """The credentials for the next request; reloaded first if their files changed."""
        with self._lock:
            now = self._clock()
            if now - self._checked_at >= RECHECK_SECONDS:
                self._checked_at = now
                if self._files_stamp(self._config) != self._stamp:
                    try:
                        self._reload()
                    except KubeAuthError as error:
                        log.warning("credentials changed on disk but do not load yet: %s", error)
            return self._request_auth()

    def refresh(self) -> RequestAuth:
        """Reload the configuration from its source and return the new credentials."""
        with self._lock:
            self._reload()
            return self._request_auth()

    def _reload(self) -> None:
        config = self._load()
        stamp = self._files_stamp(config)
        context = _tls_context(config)
        self._config, self._stamp, self._ssl = config, stamp, context
        self._ssl_built = True
        self.reloads += 1

    def _request_auth(self) -> RequestAuth:
        if not self._ssl_built:
            self._ssl = _tls_context(self._config)
            self._ssl_built = True
        try:
            value: str | None = self._config.get_api_key_with_prefix("BearerToken")
        except (ConfigException, OSError) as error:
            raise KubeAuthError(f"cannot refresh credentials: {error}") from error
        return RequestAuth(value, self._ssl, self._config.tls_server_name)

    def _files_stamp(self, config: Configuration) -> FileStamp:
        """Contents, not mtimes: a same-size rewrite within one mtime tick still shows (as in
        client-go's dynamic certificate files). A few kilobytes read at most once a second."""
        paths = [*self._sources, config.ssl_ca_cert, config.cert_file, config.key_file]
        stamp: list[tuple[str, bytes | None]] = []
        for path in paths:
            if not path:
                continue
            try:
                digest: bytes | None = hashlib.blake2b(Path(path).read_bytes()).digest()
            except OSError:
                digest = None
            stamp.append((str(path), digest))
        return tuple(stamp)


def _tls_context(config: Configuration) -> ssl.SSLContext | None:
    """The client TLS context for `config`; KubeAuthError if its files do not load."""
    if not str(config.host).startswith("https://"):
        return None
    try:
        context = ssl.create_default_context(cafile=config.ssl_ca_cert)
        if not config.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if config.cert_file:
            context.load_cert_chain(config.cert_file, config.key_file)
    except (ssl.SSLError, OSError) as error:
        raise KubeAuthError(f"TLS files do not load: {error}") from error
    return context


@dataclass(frozen=True, slots=True)
class Connection:
    """Everything needed to open TLS connections to one API server.

    The file fields are as first loaded (for messages and tests); requests take their TLS
    context from `credentials`, which follows the files as they rotate.
    """

    server: str
    ca_file: str | None
    verify_tls: bool
    client_cert_file: str | None
    client_key_file: str | None
    tls_server_name: str | None
    source: str
    """Human-readable origin, e.g. `kubeconfig /root/.kube/config (context kind-kind)`."""
    credentials: Credentials


def load_connection(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    token_file: str = SERVICE_TOKEN_FILENAME,
    ca_file: str = SERVICE_CERT_FILENAME,
) -> Connection:
    """Find the cluster like client-go's defaults do, or raise KubeAuthError.

    An explicit `kubeconfig` or `context` wins; otherwise a pod's service account (env
    KUBERNETES_SERVICE_HOST and the token file); otherwise `KUBECONFIG` or ~/.kube/config.
    """
    env = os.environ if environ is None else environ
    explicit = kubeconfig is not None or context is not None
    if not explicit and env.get(SERVICE_HOST_ENV_NAME) and Path(token_file).is_file():
        return _in_cluster(env, token_file, ca_file)
    path = kubeconfig or env.get("KUBECONFIG") or os.path.expanduser(DEFAULT_KUBECONFIG)
    if not any(os.path.exists(os.path.expanduser(p)) for p in path.split(os.pathsep) if p):
        hint = "" if explicit or env.get(SERVICE_HOST_ENV_NAME) else " (and not in a pod)"
        raise KubeAuthError(f"kubeconfig {path}: no such file{hint}")
    return _from_kubeconfig(path, context)


def _in_cluster(env: Mapping[str, str], token_file: str, ca_file: str) -> Connection:
    def load() -> Configuration:
        configuration = Configuration()
        # The official client is untyped; this module is its only caller (see pyproject).
        loader = InClusterConfigLoader(token_file, ca_file, environ=env)  # type: ignore[no-untyped-call]
        try:
            loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
        except (ConfigException, OSError) as error:
            raise KubeAuthError(f"in-cluster configuration ({token_file}): {error}") from error
        return configuration

    source = f"in-cluster service account ({token_file})"
    return _connection(load, source, (token_file, ca_file))


def _from_kubeconfig(path: str, context: str | None) -> Connection:
    where = f"kubeconfig {path}" + (f" (context {context})" if context else "")

    def load() -> Configuration:
        configuration = Configuration()
        try:
            load_kube_config(  # type: ignore[no-untyped-call]  # untyped official client
                config_file=path,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
        except (ConfigException, OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as e:
            raise KubeAuthError(f"{where}: {e}") from e
        if not configuration.host or configuration.host == "http://localhost":
            raise KubeAuthError(f"{where}: no cluster server URL")
        return configuration

    files = tuple(os.path.expanduser(p) for p in path.split(os.pathsep) if p)
    return _connection(load, where, files)


def _connection(
    load: Callable[[], Configuration], source: str, files: tuple[str, ...]
) -> Connection:
    config = load()
    credentials = Credentials(load, config, files)
    return Connection(
        server=str(config.host).rstrip("/"),
        ca_file=config.ssl_ca_cert,
        verify_tls=bool(config.verify_ssl),
        client_cert_file=config.cert_file,
        client_key_file=config.key_file,
        tls_server_name=config.tls_server_name,
        source=source,
        credentials=credentials,
    )


def context_namespace(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The namespace the kubeconfig's context names (kubectl's default for `-n`), if any.

    Same file lookup as `load_connection` (`KUBECONFIG` may list several files; the official
    client merges them); None when there is no kubeconfig or the context names no namespace.
    """
    env = os.environ if environ is None else environ
    path = kubeconfig or env.get("KUBECONFIG") or os.path.expanduser(DEFAULT_KUBECONFIG)
    if not any(os.path.exists(os.path.expanduser(p)) for p in path.split(os.pathsep) if p):
        return None
    try:
        contexts, active = list_kube_config_contexts(config_file=path)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as e:
        raise KubeAuthError(f"kubeconfig {path}: {e}") from e
    chosen = (
        active if context is None else next((c for c in contexts if c["name"] == context), None)
    )
    if chosen is None:
        raise KubeAuthError(f"kubeconfig {path}: no context named {context!r}")
    namespace = (chosen.get("context") or {}).get("namespace")
    return namespace if isinstance(namespace, str) and namespace else None
