"""The apiserver the proxy forwards to, and the proxy's own credential for it.

Loaded with the `kubernetes` package's config loaders (through `foundation.kube.Kube`):
in a pod the service account (its token file is re-read as kubelet rotates it),
elsewhere a kubeconfig with a bearer token, an exec plugin or a client
certificate. The apiserver's certificate is always verified (the kubeconfig's CA
and `tls-server-name`); a kubeconfig that skips verification is refused, since
the proxy would otherwise hand its impersonation rights to whoever answers.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from foundation.kube import Kube, KubeError
from guard.errors import OptionsError


@dataclass(frozen=True)
class Upstream:
    """Where and how to reach the apiserver: address, TLS context, name to verify, credential."""

    host: str
    port: int
    server_hostname: str
    ssl: ssl.SSLContext
    credential: Callable[[], str | None]  # a whole Authorization value, or None (client certificate)

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"

    async def connect(self, within: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A verified TLS connection to the apiserver (HTTP/1.1 only: the proxy speaks h11)."""
        async with asyncio.timeout(within):
            return await asyncio.open_connection(
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.server_hostname,
                ssl_handshake_timeout=within,
                limit=256 * 1024,
            )


def client_context(
    ca_file: str | None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """TLS to the apiserver: verify it with `ca_file` (system CAs if None), offer only HTTP/1.1."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def parse_address(value: str, flag: str = "--apiserver") -> tuple[str, int]:
    """HOST:PORT (`[v6]:PORT` too); the `OptionsError` of `flag` names the expected shape."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise OptionsError(flag, f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def upstream_from_kube(kube: Kube, address: str | None = None) -> Upstream:
    """The apiserver and credential of a kubeconfig or the in-cluster service account.

    `address` (HOST:PORT) overrides where to connect; the certificate is still verified
    against the configured server name. Raises KubeError for unusable configurations.
    """
    cfg = kube.api.configuration
    if not cfg.verify_ssl:
        raise KubeError(
            "the kubeconfig skips TLS verification of the apiserver; the impersonating proxy "
            "needs the apiserver's CA (certificate-authority or certificate-authority-data)"
        )
    server = urlsplit(cfg.host)
    if server.scheme != "https" or not server.hostname:
        raise KubeError(f"the apiserver must be an https:// URL, got {cfg.host!r}")
    host, port = server.hostname, server.port or 443
    if address:
        try:
            host, port = parse_address(address)
        except OptionsError as exc:
            raise KubeError(exc.message) from None
    name = getattr(cfg, "tls_server_name", None) or server.hostname
    try:
        ctx = client_context(cfg.ssl_ca_cert, cfg.cert_file, cfg.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise KubeError(f"cannot load the apiserver CA or client certificate: {exc}") from None

    def credential() -> str | None:
        # Calls the loader's refresh hook: an in-cluster token file is re-read as kubelet rotates it.
        value = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        return str(value) if value else None

    if credential() is None and not cfg.cert_file:
        raise KubeError("the kubeconfig has no credentials (a token, an exec plugin or a client certificate)")
    return Upstream(host, port, name, ctx, credential)
