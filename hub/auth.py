"""Who is calling: users and service principals (bearer JWTs) or cluster agents.

Users present Entra-shaped JWTs from a configured issuer (the local issuer or an
Entra tenant). Agents present an *agent token*: a short JWT signed with their
identity certificate's key, the certificate in `x5c` (see `foundation.tokens`). The
certificate must chain to the hub's cluster CA, be unexpired by the hub's clock,
and still be on record (deleting a cluster revokes its certificates).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
from sqlalchemy import select
from starlette.requests import Request

from foundation import pki, tokens
from foundation.oidc import OidcVerifier, TokenError, entra_issuers, unverified_issuer
from foundation.wire import AGENT_TOKEN_TYPE
from hub.context import Hub
from hub.directory import member_groups
from hub.errors import forbidden, unauthorized
from hub.store.models import Cluster, IdentityCertificate

PrincipalKind = Literal["user", "servicePrincipal", "agent"]


def revoked() -> Exception:
    return unauthorized("identity certificate has been revoked (cluster deleted or re-onboarded)")


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    object_id: str  # oid for users and service principals; the cluster's resource id for agents
    name: str
    tenant_id: str | None = None
    groups: tuple[str, ...] = ()
    cluster_id: int | None = None
    cert_serial: str | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def principal_ids(self) -> list[str]:
        """Ids that role assignments may name for this caller: itself and its groups."""
        return [self.object_id, *self.groups]


class _TokenCache:
    """Bounded map of verified token hash → (expiry, value)."""

    def __init__(self, size: int = 100_000) -> None:
        self._items: OrderedDict[bytes, tuple[float, Any]] = OrderedDict()
        self._size = size

    def get(self, key: bytes) -> Any | None:
        item = self._items.get(key)
        if item is None or item[0] < time.time():
            return None
        return item[1]

    def put(self, key: bytes, expires: float, value: Any) -> None:
        self._items[key] = (expires, value)
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


class Authenticator:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        audiences = hub.config.audiences
        self.verifiers: dict[str, OidcVerifier] = {}
        if hub.config.local_issuer:
            self.verifiers[hub.issuer] = OidcVerifier.with_keys(
                hub.issuer, audiences, {"keys": [hub.issuer_jwk()]}
            )
        for tenant in hub.config.entra_tenants:
            for issuer in entra_issuers(tenant):
                self.verifiers[issuer] = OidcVerifier(issuer, audiences)
        self._agent_tokens = _TokenCache()
        self._agent_certs = _TokenCache()  # x5c hash -> (public key, serial, not after), chain checked

    async def authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("missing bearer token (Authorization: Bearer <token>)")
        token = token.strip()
        try:
            typ = jwt.get_unverified_header(token).get("typ")
        except jwt.InvalidTokenError as exc:
            raise unauthorized(f"malformed bearer token: {exc}") from None
        if typ == AGENT_TOKEN_TYPE:
            return await self.authenticate_agent(token)
        return await self.authenticate_user(token)

    async def authenticate_user(self, token: str) -> Principal:
        try:
            issuer = unverified_issuer(token)
            verifier = self.verifiers.get(issuer)
            if verifier is None:
                raise TokenError(f"issuer {issuer!r} is not trusted by this hub")
            claims = await verifier.verify_token(token)
        except TokenError as exc:
            raise unauthorized(str(exc)) from None
        oid = claims.get("oid")
        if not isinstance(oid, str):
            raise unauthorized("token has no oid claim")
        is_app = claims.get("idtyp") == "app" or (
            "scp" not in claims and "upn" not in claims and "preferred_username" not in claims
        )
        groups = claims.get("groups") or []
        if "groups" in (claims.get("_claim_names") or {}):
            groups = await self._overage_groups(issuer, oid)
        name = claims.get("upn") or claims.get("preferred_username") or claims.get("appid") or oid
        return Principal(
            kind="servicePrincipal" if is_app else "user",
            object_id=oid,
            name=str(name),
            tenant_id=claims.get("tid"),
            groups=tuple(str(g) for g in groups),
            claims=claims,
        )

    async def _overage_groups(self, issuer: str, oid: str) -> list[str]:
        if issuer != self.hub.issuer:
            # Entra overage needs Graph app credentials the hub does not hold yet.
            raise unauthorized(
                "token has group overage claims; resolving them for Entra tenants is not configured"
            )
        async with self.hub.sessions() as session:
            return await member_groups(session, oid)

    def verify_agent_token(self, token: str) -> str:
        """Check an agent token's signature, chain and expiry (no database); return the cert serial.

        Routes that must also know the certificate is still on record either call
        `authenticate_agent` or fold that check into their own statement (heartbeats).
        """
        key = hashlib.sha256(token.encode()).digest()
        verified = self._agent_tokens.get(key)
        if verified is None:
            public_key, serial, not_after = self._agent_certificate(token)
            try:
                claims = tokens.verify_signed(
                    token, public_key, self.hub.config.agent_audience, max_ttl=tokens.AGENT_TOKEN_TTL + 60
                )
            except (jwt.InvalidTokenError, ValueError) as exc:  # ValueError: a key type we do not sign with
                raise unauthorized(f"invalid agent token: {exc}") from None
            verified = (serial, not_after)
            self._agent_tokens.put(key, float(claims["exp"]), verified)
        serial, not_after = verified
        if not_after <= self.hub.now():
            raise unauthorized(f"identity certificate expired at {not_after.isoformat()}")
        return str(serial)

    def _agent_certificate(self, token: str) -> tuple[Any, str, dt.datetime]:
        """The public key, serial and expiry of the certificate a token carries, its chain checked.

        Every token of a cluster carries the same certificate for its 90 days, and agents mint
        a new token for nearly every heartbeat: the chain is checked once per certificate, so a
        fresh token costs one signature check, not two and a certificate parse."""
        try:
            entry = tokens.agent_token_x5c(token)
        except jwt.InvalidTokenError as exc:
            raise unauthorized(str(exc)) from None
        key = hashlib.sha256(entry.encode()).digest()
        known = self._agent_certs.get(key)
        if known is None:
            try:
                cert = tokens.load_x5c(entry)
            except jwt.InvalidTokenError as exc:
                raise unauthorized(str(exc)) from None
            if not pki.is_issued_by(cert, self.hub.cluster_ca.cert):
                raise unauthorized("agent certificate is not issued by this hub's cluster CA")
            known = (cert.public_key(), format(cert.serial_number, "x"), cert.not_valid_after_utc)
            self._agent_certs.put(key, cert.not_valid_after_utc.timestamp(), known)
        return known  # type: ignore[no-any-return]

    async def authenticate_agent(self, token: str) -> Principal:
        serial = self.verify_agent_token(token)
        async with self.hub.sessions() as session:
            row = (
                await session.execute(
                    select(IdentityCertificate.revoked_at, Cluster.id, Cluster.resource_key)
                    .join(Cluster, Cluster.id == IdentityCertificate.cluster_id)
                    .where(IdentityCertificate.serial == serial)
                )
            ).first()
        if row is None or row.revoked_at is not None:
            raise revoked()
        return Principal(
            kind="agent",
            object_id=row.resource_key,
            name=row.resource_key,
            cluster_id=row.id,
            cert_serial=serial,
        )


async def current_principal(request: Request) -> Principal:
    authenticator: Authenticator = request.app.state.authenticator
    return await authenticator.authenticate(request)


def agent_token_serial(request: Request) -> str:
    """The verified certificate serial of an agent's request, before any database check."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("missing bearer token (Authorization: Bearer <token>)")
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator.verify_agent_token(token.strip())


async def current_agent(request: Request) -> Principal:
    principal = await current_principal(request)
    if principal.kind != "agent":
        raise forbidden("this endpoint is for cluster agents (identity certificate required)")
    return principal


async def current_user(request: Request) -> Principal:
    principal = await current_principal(request)
    if principal.kind == "agent":
        raise forbidden("cluster agents cannot call the user API")
    return principal
