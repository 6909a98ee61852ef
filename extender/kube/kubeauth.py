"""Where the API server is and how to authenticate to it: the only importer of `kubernetes`.

The official client is used for what it does well and we must not re-implement: kubeconfig
parsing and merging, contexts, exec credential plugins (`aws eks get-token`, ...), client
certificates, in-cluster service-account files. Its HTTP machinery and model objects are not used:
the result is a small `Connection` record that extender/kube/kubeapi.py turns into aiohttp requests.

Tokens rotate (bound service-account tokens about hourly, exec plugin tokens on expiry), so the
record carries a `Credentials` object rather than a token. Its methods may block (an exec plugin is
a subprocess, a token is a file): call them from a worker thread.
"""

from __future__ import annotations

import os
import threading
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


class KubeAuthError(ExtenderError):
    """No usable cluster configuration; the message says which source was tried and why."""


class Credentials:
    """The current Authorization header value, refreshed the way kubectl would refresh it.

    `authorization()` runs the loader's own refresh hook: it re-runs an exec plugin once its
    token has expired and re-reads a service-account token file at most once a minute.
    `refresh()` reloads the whole configuration; the API client calls it after a 401, which is how
    a rotated token file or a revoked exec token is picked up before its nominal expiry.
    """

    def __init__(self, load: Callable[[], Configuration], initial: Configuration) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._config = initial

    def authorization(self) -> str | None:
        """`Bearer <token>` (or `Basic ...`), or None when the user authenticates by certificate."""
        with self._lock:
            try:
                value: str | None = self._config.get_api_key_with_prefix("BearerToken")
            except (ConfigException, OSError) as error:
                raise KubeAuthError(f"cannot refresh credentials: {error}") from error
            return value

    def refresh(self) -> str | None:
        """Reload the configuration from its source and return the new header value."""
        with self._lock:
            self._config = self._load()
        return self.authorization()


@dataclass(frozen=True, slots=True)
class Connection:
    """Everything needed to open TLS connections to one API server."""

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

    return _connection(load, f"in-cluster service account ({token_file})")


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

    return _connection(load, where)


def _connection(load: Callable[[], Configuration], source: str) -> Connection:
    config = load()
    credentials = Credentials(load, config)
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
