"""Kubernetes access for the agents: one ApiClient, the cluster's CA and server name, retries.

The `kubernetes` client is synchronous, so every call runs in a worker thread
(`asyncio.to_thread`) and the agents' event loops never block on the apiserver.
In a pod the client uses the service account; elsewhere a kubeconfig.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

from foundation.retry import RetryPolicy, retrying

T = TypeVar("T")
IN_CLUSTER_SERVER_NAME = "kubernetes.default.svc"


class KubeError(Exception):
    """A Kubernetes call failed for a reason retrying will not fix (RBAC, missing namespace, bad config)."""


@dataclass(frozen=True)
class ApiserverInfo:
    server: str
    server_name: str  # the name the apiserver's certificate is verified against
    ca_pem: bytes | None  # None when the kubeconfig skips verification


def _transient(exc: BaseException) -> float | None:
    if isinstance(exc, ApiException):
        if exc.status in (429, 500, 502, 503, 504) or not exc.status:
            return 0.0
        return None
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return 0.0
    return None


def describe(exc: ApiException) -> str:
    """The apiserver's own message from a Status body, else the HTTP reason."""
    import json

    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


class Kube:
    def __init__(
        self, kubeconfig: Path | None = None, retry: RetryPolicy | None = None, context: str | None = None
    ) -> None:
        self.kubeconfig = kubeconfig
        self.context = context  # a kubeconfig context other than its current one
        self.retry = retry or RetryPolicy()
        self.in_cluster = kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ
        self._api: client.ApiClient | None = None

    @property
    def api(self) -> client.ApiClient:
        if self._api is None:
            try:
                if self.in_cluster:
                    cfg = client.Configuration()
                    config.load_incluster_config(client_configuration=cfg)
                    self._api = client.ApiClient(cfg)
                else:
                    path = str(self.kubeconfig) if self.kubeconfig else None
                    self._api = config.new_client_from_config(config_file=path, context=self.context)
            except (ConfigException, OSError, ValueError) as exc:
                where = (
                    "in-cluster service account"
                    if self.in_cluster
                    else (self.kubeconfig or "default kubeconfig")
                )
                raise KubeError(f"cannot load Kubernetes credentials ({where}): {exc}") from None
        return self._api

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    async def call(self, fn: Callable[[client.ApiClient], T], what: str) -> T:
        """Run a synchronous client call in a thread, retrying transient apiserver failures."""
        api = self.api
        return await retrying(lambda: asyncio.to_thread(fn, api), self.retry, _transient, what)

    def apiserver_info(self) -> ApiserverInfo:
        cfg: client.Configuration = self.api.configuration
        ca_pem = None
        if cfg.verify_ssl and cfg.ssl_ca_cert:
            ca_pem = Path(cfg.ssl_ca_cert).read_bytes()
        if self.in_cluster:
            name = IN_CLUSTER_SERVER_NAME
        else:
            name = getattr(cfg, "tls_server_name", None) or urlsplit(cfg.host).hostname or ""
        return ApiserverInfo(server=cfg.host, server_name=name, ca_pem=ca_pem)
