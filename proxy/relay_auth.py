"""Who may open a relay session, decided by asking the hub (the relay keeps no secrets).

- Agents present their agent token (signed with the cluster identity key); the
  hub's `/agent/v1/whoami` verifies it, chain and revocation included, and names
  the cluster. The relay never trusts a cluster id the agent states itself.
- Clients present the relay credential from `listClusterUserCredential`: a JWT
  from the hub's issuer with audience `kubearc-relay`, verified against the
  issuer's JWKS like any other token. It names one user and one cluster.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from foundation.oidc import OidcVerifier, TokenError
from foundation.wire import (
    AGENT_WHOAMI_PATH,
    DISCOVERY_PATH,
    RELAY_AUDIENCE,
    RELAY_TOKEN_TYPE,
    Discovery,
    WireError,
)
from proxy.errors import HubUnavailable, Unauthorized

HUB_CONNECTIONS = 8  # kept-alive connections to the hub, and checks in flight at once


@dataclass(frozen=True)
class AgentIdentity:
    cluster: str
    expires_at: float


@dataclass(frozen=True)
class ClientIdentity:
    cluster: str
    user: str
    expires_at: float


@dataclass
class HubAuth:
    hub_url: str
    ca_file: str | None = None
    timeout: float = 10.0
    _verifier: OidcVerifier | None = field(default=None, repr=False)
    _client: httpx.AsyncClient | None = field(default=None, repr=False)
    _slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(HUB_CONNECTIONS), repr=False)

    def _tls(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True

    def _hub(self) -> httpx.AsyncClient:
        """One client with kept-alive connections for every check: a new TLS connection per agent
        session cost the relay and the hub a handshake each, and made a reconnect storm one.

        Few connections, and never a queue inside httpx: its pool looks at every connection,
        and every queued request, each time it hands a connection out, so 32 connections and a
        storm's thousand waiting checks cost the relay 2-3 ms of CPU per check where 8 behind
        `_slots` cost 1 ms (`loadtest/README.md`). The checks wait in `_slots`, in order.
        """
        if self._client is None:
            limits = httpx.Limits(max_connections=HUB_CONNECTIONS, max_keepalive_connections=HUB_CONNECTIONS)
            self._client = httpx.AsyncClient(verify=self._tls(), timeout=self.timeout, limits=limits)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def agent(self, token: str) -> AgentIdentity:
        try:
            async with asyncio.timeout(self.timeout), self._slots:
                r = await self._hub().get(
                    f"{self.hub_url}{AGENT_WHOAMI_PATH}", headers={"Authorization": f"Bearer {token}"}
                )
        except TimeoutError:
            raise HubUnavailable(f"the hub did not verify the agent within {self.timeout:.0f}s") from None
        except httpx.HTTPError as exc:
            raise HubUnavailable(f"cannot reach the hub to verify the agent: {exc}") from None
        if r.status_code in (401, 403):
            raise Unauthorized(hub_message(r, f"hub refused the credential ({r.status_code})"))
        if r.status_code != 200:
            raise HubUnavailable(f"hub answered {r.status_code} verifying the agent")
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp", 0)
        return AgentIdentity(str(r.json()["resourceId"]).lower(), float(exp))

    async def _client_verifier(self) -> OidcVerifier:
        if self._verifier is None:
            try:
                r = await self._hub().get(f"{self.hub_url}{DISCOVERY_PATH}")
                r.raise_for_status()
                discovery = Discovery.from_json(r.json())
            except (httpx.HTTPError, ValueError, WireError) as exc:
                raise HubUnavailable(f"cannot read the hub's configuration: {exc}") from None
            self._verifier = OidcVerifier(
                discovery.relay_issuer, [RELAY_AUDIENCE], verify=self.ca_file or True
            )
        return self._verifier

    async def client(self, token: str) -> ClientIdentity:
        try:
            if jwt.get_unverified_header(token).get("typ") != RELAY_TOKEN_TYPE:
                raise Unauthorized("not a relay credential (get one with listClusterUserCredential)")
            claims: dict[str, Any] = await (await self._client_verifier()).verify_token(token)
        except (TokenError, jwt.InvalidTokenError) as exc:
            raise Unauthorized(f"relay credential refused: {exc}") from None
        cluster, user = claims.get("cluster"), claims.get("sub")
        if not isinstance(cluster, str) or not isinstance(user, str):
            raise Unauthorized("relay credential names no cluster or user")
        return ClientIdentity(cluster.lower(), user, float(claims["exp"]))


def hub_message(response: httpx.Response, otherwise: str) -> str:
    """The message of a hub's error answer (ARM's shape), or `otherwise` when it has none."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return otherwise


def bearer(header: str | None) -> str:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer credential (Authorization: Bearer ...)")
    return token.strip()
