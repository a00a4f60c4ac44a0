"""Assemble guard's Azure RBAC authorizer: checkAccess client, its bearer credential and readiness.

`kubearc guard serve` stays a thin command line: it validates flags and calls
`azure_authorizer` with one of two credentials for checkAccess:

- `IdentityCredential`: agent tokens signed with the cluster's identity
  certificate (a `file:DIR` or `secret:NS/NAME` identity store). Only a kubearc
  hub accepts them, and only for its own cluster's scope. The store is read
  again at least every `reload_after` seconds and whenever a token is due, so a
  certificate renewed by `kubearc agent identity` is picked up without a restart.
- `ClientCredential`: an Entra app (client id + secret) through msal's client
  credentials grant, for ARM (`https://management.azure.com/.default`). msal
  caches the token; this class keeps it until five minutes before it expires so a
  review does not pay a thread hop for msal's cache lookup.

`readiness` chains the start-up steps (signing keys, one checkAccess token) so
`/readyz` stays 503, naming the failing step, until every one has worked once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msal

from foundation import tokens
from foundation.identitystore import IdentityStore
from foundation.msalhttp import issuer_http_client
from foundation.oidc import ENTRA_AUTHORITY
from guard.authz.actions import CONNECTED_CLUSTERS, MANAGED_CLUSTERS
from guard.authz.checkaccess import ARM, CheckAccessClient, Credential
from guard.authz.provider import AuthorizerConfig, AzureAuthorizer
from guard.errors import CredentialError, NotReady
from guard.interfaces import FailurePolicy as Policy

log = logging.getLogger("kubearc.guard")

ARM_SCOPE = "https://management.azure.com/.default"
CLUSTER_TYPES = {"connectedClusters": CONNECTED_CLUSTERS, "managedClusters": MANAGED_CLUSTERS}
TOKEN_MARGIN = 60.0  # mint a new agent token this long before the current one expires
MSAL_MARGIN = 300.0  # msal itself refreshes app tokens in their last five minutes

_SEGMENT = r"[^/\s]+"


def check_cluster_resource_id(resource_id: str, cluster_type: str) -> str:
    """The ARM id of the cluster, normalised; a ValueError names the expected shape.

    Every scope guard checks is this id or one of its namespaces, so a typo here
    would make every review NotAllowed: refuse it at start-up instead.
    """
    rid = resource_id.strip().rstrip("/")
    shape = (
        rf"/subscriptions/{_SEGMENT}/resourceGroups/{_SEGMENT}/providers/{re.escape(cluster_type)}/{_SEGMENT}"
    )
    if not re.fullmatch(shape, rid, flags=re.IGNORECASE):
        raise ValueError(
            f"expected /subscriptions/SUB/resourceGroups/RG/providers/{cluster_type}/NAME, "
            f"got {resource_id!r}"
        )
    return rid


class IdentityCredential:
    """Agent tokens from the cluster identity store, re-read so renewals are picked up."""

    def __init__(
        self,
        store: IdentityStore,
        audience: str,
        *,
        reload_after: float = 60.0,
        ttl: int = tokens.AGENT_TOKEN_TTL,
    ) -> None:
        self.store = store
        self.audience = audience.rstrip("/")
        self.reload_after = reload_after
        self.ttl = ttl
        self._cert: Any = None
        self._token = ""
        self._expires = 0.0
        self._loaded = float("-inf")
        self._lock = asyncio.Lock()
        self.mints = 0  # tokens made (tests)

    def _fresh(self, now: float) -> bool:
        return bool(self._token) and now < self._expires - TOKEN_MARGIN

    async def __call__(self) -> str:
        now = time.monotonic()
        if self._fresh(now) and now < self._loaded + self.reload_after:
            return self._token
        async with self._lock:
            now = time.monotonic()
            if self._fresh(now) and now < self._loaded + self.reload_after:
                return self._token
            try:
                stored = await self.store.load()
            except Exception as exc:
                if self._fresh(now):  # a passing read failure: the token in hand is still good
                    log.warning(
                        "cannot re-read the identity store; using the current token",
                        extra={"store": self.store.description, "error": str(exc)[:200]},
                    )
                    return self._token
                raise CredentialError(
                    f"cannot read the identity in {self.store.description}: {exc}"
                ) from None
            if stored is None:
                raise CredentialError(
                    f"no identity certificate in {self.store.description} yet "
                    "(is `kubearc agent identity` running?)"
                )
            if stored.not_after <= dt.datetime.now(dt.UTC):
                raise CredentialError(
                    f"the identity certificate in {self.store.description} expired at "
                    f"{stored.not_after.isoformat()}"
                )
            self._loaded = now
            if stored.pair.cert != self._cert or not self._fresh(now):
                if self._cert is not None and stored.pair.cert != self._cert:
                    log.info("identity certificate changed; minting tokens with the new one")
                self._token = tokens.make_agent_token(stored.pair, self.audience, ttl=self.ttl)
                self._expires = now + self.ttl
                self._cert = stored.pair.cert
                self.mints += 1
            return self._token


@dataclass
class ClientCredential:
    """An Entra app's token for `scope` (ARM by default) through msal client credentials."""

    client_id: str
    client_secret: str = field(repr=False)
    authority: str  # https://login.microsoftonline.com/<tenant>, or a generic OIDC issuer URL
    scope: str = ARM_SCOPE
    ca_file: str | None = None  # for a self-signed OIDC issuer (the hub's local issuer)
    timeout: float = 5.0
    _app: Any = field(default=None, init=False, repr=False)
    _token: str = field(default="", init=False, repr=False)
    _expires: float = field(default=0.0, init=False, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    @property
    def oidc_authority(self) -> bool:
        return not self.authority.lower().startswith(ENTRA_AUTHORITY)

    def _acquire(self) -> dict[str, Any]:
        if self._app is None:  # built lazily: msal fetches the authority's metadata when built
            verify: str | bool = self.ca_file or True
            where: dict[str, Any] = (
                {"oidc_authority": self.authority} if self.oidc_authority else {"authority": self.authority}
            )
            self._app = msal.ConfidentialClientApplication(
                self.client_id,
                client_credential=self.client_secret,
                verify=verify,
                # requests ignores `verify=` when $REQUESTS_CA_BUNDLE is set; kubearc's session does not.
                http_client=issuer_http_client(verify, self.authority),
                timeout=self.timeout,
                **where,
            )
        result: dict[str, Any] = self._app.acquire_token_for_client([self.scope]) or {}
        return result

    async def __call__(self) -> str:
        if self._token and time.monotonic() < self._expires:
            return self._token
        async with self._lock:
            if self._token and time.monotonic() < self._expires:
                return self._token
            result = await asyncio.to_thread(self._acquire)
            token = result.get("access_token")
            if not isinstance(token, str) or not token:
                what = result.get("error_description") or result.get("error") or "no token in the answer"
                raise CredentialError(
                    f"msal client credentials for {self.scope}: {str(what).splitlines()[0]}"
                )
            lifetime = result.get("expires_in")
            seconds = float(lifetime) if isinstance(lifetime, int | float) else 0.0
            self._token = token
            self._expires = time.monotonic() + max(0.0, seconds - MSAL_MARGIN)
            return token

    def close(self) -> None:
        if self._app is not None:
            self._app.http_client.close()


@dataclass(frozen=True)
class AuthzSettings:
    """What `kubearc guard serve` needs to answer SubjectAccessReviews from Azure RBAC."""

    cluster_resource_id: str
    checkaccess_url: str = ARM
    checkaccess_ca: str | None = None
    cluster_type: str = CONNECTED_CLUSTERS
    skip_users: frozenset[str] = frozenset()
    skip_groups: frozenset[str] = frozenset()
    not_allowed: Policy = "noopinion"
    without_oid: Policy = "noopinion"
    failure: Policy = "noopinion"
    allow_ttl: float = 300.0
    deny_ttl: float = 30.0


def azure_authorizer(settings: AuthzSettings, credential: Credential) -> AzureAuthorizer:
    """The authorizer and its checkAccess client (close it with `authorizer.client.aclose()`)."""
    client = CheckAccessClient(
        settings.checkaccess_url,
        credential,
        ca_file=settings.checkaccess_ca,
        allow_ttl_cap=settings.allow_ttl,
        deny_ttl_cap=settings.deny_ttl,
    )
    config = AuthorizerConfig(
        cluster_resource_id=settings.cluster_resource_id,
        cluster_type=settings.cluster_type,
        skip_users=settings.skip_users,
        skip_groups=settings.skip_groups,
        without_oid=settings.without_oid,
        not_allowed=settings.not_allowed,
        failure=settings.failure,
    )
    return AzureAuthorizer(config, client)


Step = tuple[str, Callable[[], Awaitable[object]]]


def readiness(*steps: Step) -> Callable[[], Awaitable[None]]:
    """One loader for `GuardServer`: every step in order, failures named by their step."""

    async def load() -> None:
        for name, step in steps:
            try:
                await step()
            except Exception as exc:
                raise NotReady(f"{name}: {exc}") from exc

    return load
