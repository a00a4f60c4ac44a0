"""Group overage: a user's groups from Graph `getMemberGroups` when the token had too many to carry.

guard fetches a Graph token on every review and reads one page; here the app
token comes from msal's client-credentials cache (refreshed only near expiry),
every `@odata.nextLink` page is followed, results are cached per user with a TTL,
and concurrent reviews of one user share one lookup (single-flight).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from foundation.msalhttp import confidential_client
from guard.authn.base import AuthenticationError

log = logging.getLogger(__name__)

GRAPH_BASE = "https://graph.microsoft.com/v1.0"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
MAX_PAGES = 100
MAX_CACHED_USERS = 50_000


@dataclass(frozen=True)
class GraphSettings:
    client_id: str
    client_secret: str = field(repr=False)
    authority: str  # https://login.microsoftonline.com/<tenant> or the local issuer URL
    oidc_authority: bool = False  # True for a generic OIDC issuer (the hub's local issuer)
    base_url: str = GRAPH_BASE  # Graph's /v1.0 root
    ca_file: str | None = None  # CA bundle for a self-signed issuer and Graph endpoint
    scope: str = GRAPH_SCOPE
    ttl: float = 300.0
    timeout: float = 5.0


class GraphGroups:
    """Resolves overage groups; `member_groups` raises AuthenticationError when Graph cannot answer."""

    def __init__(self, settings: GraphSettings) -> None:
        self.settings = settings
        self.trusted_hosts = {urlsplit(settings.base_url).netloc.lower()}
        s = settings
        self._app = confidential_client(
            s.client_id, s.client_secret, s.authority, s.oidc_authority, s.ca_file, s.timeout
        )
        self._http = httpx.AsyncClient(
            verify=ssl.create_default_context(cafile=settings.ca_file) if settings.ca_file else True,
            timeout=settings.timeout,
        )
        self._cache: dict[str, tuple[float, list[str]]] = {}
        self._inflight: dict[str, asyncio.Task[list[str]]] = {}
        self.lookups = 0  # Graph lookups made (tests and metrics)

    async def aclose(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        await self._http.aclose()
        self._app.http_client.close()

    def endpoint(self, oid: str, claims: dict[str, Any]) -> str:
        """The token's own `_claim_sources` URL when it names a trusted host, else the configured Graph."""
        source = (claims.get("_claim_names") or {}).get("groups")
        url = ((claims.get("_claim_sources") or {}).get(source) or {}).get("endpoint")
        if isinstance(url, str):
            parts = urlsplit(url)
            if parts.scheme == "https" and parts.netloc.lower() in self.trusted_hosts:
                return url
        return f"{self.settings.base_url.rstrip('/')}/users/{oid}/getMemberGroups"

    async def member_groups(self, oid: str, claims: dict[str, Any]) -> list[str]:
        cached = self._cache.get(oid)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        task = self._inflight.get(oid)
        if task is None:
            # A task of its own, so that one review's deadline (cancellation) does not cancel the
            # lookup other reviews of the same user are waiting for; httpx's timeout bounds it.
            task = asyncio.create_task(self._lookup(oid, claims))
            self._inflight[oid] = task
            task.add_done_callback(lambda t: self._done(oid, t))
        return await asyncio.shield(task)

    def _done(self, oid: str, task: asyncio.Task[list[str]]) -> None:
        self._inflight.pop(oid, None)
        if not task.cancelled() and task.exception() is None:
            now = time.monotonic()
            if len(self._cache) >= MAX_CACHED_USERS:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                while len(self._cache) >= MAX_CACHED_USERS:
                    self._cache.pop(next(iter(self._cache)))
            self._cache[oid] = (now + self.settings.ttl, task.result())

    async def _app_token(self) -> str:
        result = await asyncio.to_thread(self._app.acquire_token_for_client, [self.settings.scope])
        token = (result or {}).get("access_token")
        if not token:
            error = (result or {}).get("error_description") or (result or {}).get("error") or "no token"
            raise AuthenticationError(f"cannot get a Graph token for group overage: {error}")
        return str(token)

    async def _lookup(self, oid: str, claims: dict[str, Any]) -> list[str]:
        self.lookups += 1
        token = await self._app_token()
        headers = {"Authorization": f"Bearer {token}"}
        url: str | None = self.endpoint(oid, claims)
        groups: list[str] = []
        pages = 0
        try:
            while url:
                pages += 1
                if pages > MAX_PAGES:
                    raise AuthenticationError("group overage: too many getMemberGroups pages")
                response = await self._http.post(url, json={"securityEnabledOnly": False}, headers=headers)
                if response.status_code != 200:
                    raise AuthenticationError(
                        f"group overage: getMemberGroups answered HTTP {response.status_code}"
                    )
                doc = response.json()
                groups.extend(str(g) for g in doc.get("value", []))
                next_link = doc.get("@odata.nextLink")
                url = next_link if isinstance(next_link, str) and self._trusted(next_link) else None
                if isinstance(next_link, str) and url is None:
                    raise AuthenticationError("group overage: @odata.nextLink points at an untrusted host")
        except httpx.HTTPError as exc:
            raise AuthenticationError(f"group overage: Graph unreachable: {type(exc).__name__}") from None
        except ValueError:
            raise AuthenticationError("group overage: getMemberGroups answered no JSON") from None
        log.info("overage groups resolved", extra={"oid": oid, "groups": len(groups), "pages": pages})
        return groups

    def _trusted(self, url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme == "https" and parts.netloc.lower() in self.trusted_hosts
