"""The agents' client for the hub's agent API (`/agent/v1/...`).

Every call goes out over HTTPS (through `HTTPS_PROXY` when set: httpx reads the
environment), verifies the hub against the hub CA, and authenticates with a
short agent token signed by the identity key (`foundation.agenttoken`, which
reuses it until a minute before it expires). Connection errors, 5xx and 429 are retried with
backoff; any other 4xx is the hub saying no, and is raised at once with its
message.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from cryptography import x509

from agents import AGENT_VERSION
from agents.errors import HubRefused
from foundation import pki, tokens
from foundation.agenttoken import AgentTokens
from foundation.retry import RetryPolicy, retrying
from foundation.wire import AGENT_WHOAMI_PATH


class _Retryable(Exception):
    def __init__(self, status: int, message: str, retry_after: float) -> None:
        super().__init__(f"hub answered {status}: {message}")
        self.retry_after = retry_after


@dataclass(frozen=True)
class IssuedCertificate:
    certificate: x509.Certificate
    ca: x509.Certificate
    not_after: dt.datetime
    renew_after: dt.datetime


def _tls_verification_failed(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _transient(exc: BaseException) -> float | None:
    if isinstance(exc, _Retryable):
        return exc.retry_after
    if isinstance(exc, httpx.TransportError):
        return None if _tls_verification_failed(exc) else 0.0
    return None


def _retry_after(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max((when - dt.datetime.now(dt.UTC)).total_seconds(), 0.0) if when.tzinfo else 0.0


def _error_message(resp: httpx.Response) -> tuple[str, str]:
    try:
        err = resp.json().get("error", {})
        return str(err.get("code") or resp.reason_phrase), str(err.get("message") or resp.text[:500])
    except (ValueError, AttributeError):
        return resp.reason_phrase or "Error", resp.text[:500] or "(empty body)"


def _time(doc: dict[str, Any], key: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(str(doc[key]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        raise HubRefused(200, "InvalidResponse", f"certificate response has no valid {key!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def parse_issued(doc: dict[str, Any], key: pki.PrivateKey) -> IssuedCertificate:
    """Check the hub's answer really is a certificate for our key, from the CA it names."""
    try:
        cert = pki.load_cert(str(doc["certificate"]).encode())
        ca = pki.load_cert(str(doc["caCertificate"]).encode())
    except (KeyError, ValueError) as exc:
        raise HubRefused(200, "InvalidResponse", f"certificate response is not usable: {exc}") from None
    if cert.public_key() != key.public_key():
        raise HubRefused(200, "InvalidResponse", "the issued certificate is not for the key we sent")
    if not pki.is_issued_by(cert, ca):
        raise HubRefused(200, "InvalidResponse", "the issued certificate does not chain to caCertificate")
    return IssuedCertificate(cert, ca, _time(doc, "notAfter"), _time(doc, "renewAfter"))


class HubClient:
    def __init__(
        self,
        url: str,
        ca_file: Path | None = None,
        *,
        identity: pki.KeyPair | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")  # also the audience of agent tokens and assertions
        self.retry = retry or RetryPolicy()
        verify = ssl.create_default_context(cafile=str(ca_file)) if ca_file else ssl.create_default_context()
        self._http = httpx.AsyncClient(
            base_url=self.url,
            verify=verify,
            timeout=timeout,
            trust_env=True,
            transport=transport,
            headers={"User-Agent": f"kubearc-agent/{AGENT_VERSION}"},
        )
        self._tokens = AgentTokens(None, self.url)
        if identity is not None:
            self._tokens.use(identity)

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def identity(self) -> pki.KeyPair | None:
        return self._tokens.pair

    def set_identity(self, pair: pki.KeyPair) -> None:
        """Switch to another identity certificate (after a renewal); drops the cached token."""
        self._tokens.use(pair)

    def agent_token(self) -> str:
        return self._tokens.current()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: bool = True,
        body_factory: Callable[[], Any] | None = None,
        retry: RetryPolicy | None = None,
    ) -> dict[str, Any]:
        """One API call with retries. `body_factory` builds a fresh body per attempt (one-time assertions)."""

        async def attempt() -> dict[str, Any]:
            headers = {"Authorization": f"Bearer {self.agent_token()}"} if auth else {}
            payload = body_factory() if body_factory else body
            try:
                resp = await self._http.request(method, path, json=payload, headers=headers)
            except httpx.TransportError as exc:
                if failed := _tls_verification_failed(exc):
                    raise HubRefused(
                        0, "TlsVerificationFailed", f"{self.url}: {failed} (check --hub-ca)"
                    ) from None
                raise
            if resp.status_code == 429 or resp.status_code >= 500:
                code, message = _error_message(resp)
                raise _Retryable(
                    resp.status_code, f"{code}: {message}", _retry_after(resp.headers.get("retry-after"))
                )
            if resp.status_code >= 400:
                raise HubRefused(resp.status_code, *_error_message(resp))
            try:
                doc = resp.json()
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                raise HubRefused(
                    resp.status_code, "InvalidResponse", f"{method} {path} did not return a JSON object"
                )
            return doc

        return await retrying(attempt, retry or self.retry, _transient, f"{method} {self.url}{path}")

    async def onboard(
        self, resource_id: str, onboarding_key: pki.PrivateKey, key: pki.PrivateKey
    ) -> IssuedCertificate:
        """Prove possession of the onboarding key and get a certificate for `key`."""
        csr = pki.make_csr(key, resource_id.rsplit("/", 1)[-1]).decode()

        def body() -> dict[str, str]:
            assertion = tokens.make_onboarding_assertion(onboarding_key, resource_id, audience=self.url)
            return {"resourceId": resource_id, "assertion": assertion, "csr": csr}

        doc = await self.call("POST", "/agent/v1/identity/certificate", auth=False, body_factory=body)
        return parse_issued(doc, key)

    async def renew(self, key: pki.PrivateKey, name: str) -> IssuedCertificate:
        doc = await self.call("POST", "/agent/v1/identity/renew", {"csr": pki.make_csr(key, name).decode()})
        return parse_issued(doc, key)

    async def aad_proxy_certificate(self, key: pki.PrivateKey) -> tuple[IssuedCertificate, str]:
        """A serving certificate for the cluster's kube-aad-proxy (impersonation mode) and its name."""
        csr = pki.make_csr(key, "kube-aad-proxy").decode()
        doc = await self.call("POST", "/agent/v1/aad-proxy/certificate", {"csr": csr})
        name = doc.get("serverName")
        if not isinstance(name, str) or not name:
            raise HubRefused(200, "InvalidResponse", "serving certificate response has no serverName")
        return parse_issued(doc, key), name

    async def heartbeat(self) -> dict[str, Any]:
        return await self.call("POST", "/agent/v1/heartbeat", {})

    async def put_metadata(self, metadata: dict[str, Any]) -> dict[str, Any]:
        return await self.call("PUT", "/agent/v1/metadata", metadata)

    async def put_usage(
        self, agents: list[dict[str, Any]], retry: RetryPolicy | None = None
    ) -> dict[str, Any]:
        return await self.call("PUT", "/agent/v1/usage", {"agents": agents}, retry=retry)

    async def post_logs(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.call("POST", "/agent/v1/logs", {"entries": entries})

    async def whoami(self) -> dict[str, Any]:
        """Whether the hub still accepts our identity certificate (401 if revoked or expired)."""
        return await self.call("GET", AGENT_WHOAMI_PATH)

    async def get_upgrade(self) -> dict[str, Any]:
        return await self.call("GET", "/agent/v1/upgrade")

    async def get_configurations(self) -> dict[str, Any]:
        return await self.call("GET", "/agent/v1/configurations")
