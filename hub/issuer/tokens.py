"""Entra-shaped tokens signed by the local issuer: access, ID and refresh tokens.

Claims follow Entra ID v2 access tokens (`oid`, `tid`, `sub`, `azp`, `idtyp`,
`preferred_username`, `upn`, `scp`/`roles`, `groups`), so guard and the hub run
the same code on tokens from Entra and from the hub. Above `GROUP_OVERAGE_LIMIT`
groups the token carries the overage claims instead of `groups`, as Entra does.

Refresh tokens are opaque to clients: a JSON grant sealed with the hub's data key
(Fernet: encrypted and authenticated), so every replica can redeem any of them
without a table, and none can be read or forged by the holder.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import jwt

from hub.context import Hub
from hub.errors import HubError
from hub.secrets import SecretError

# The built-in public client (`kubearc login`); the discovery document names it, tokens carry it in `azp`.
CLI_CLIENT_ID = "kubearc-cli"
# Where the sign-in page may send its codes for the built-in client: loopback, any port (RFC 8252).
CLI_REDIRECT_URIS = ("http://localhost", "http://127.0.0.1")
GROUP_OVERAGE_LIMIT = 200
ID_TOKEN_TTL = dt.timedelta(hours=1)
REFRESH_TOKEN_TTL = dt.timedelta(days=90)  # Entra's default for non-SPA clients
_REFRESH_PREFIX = "kart1."


def issue_access_token(
    hub: Hub,
    *,
    oid: str,
    audience: str,
    kind: Literal["user", "app"],
    client_id: str,
    upn: str | None = None,
    name: str | None = None,
    groups: list[str] | None = None,
    scopes: list[str] | None = None,
    ttl: dt.timedelta | None = None,
) -> tuple[str, int]:
    """Return (token, lifetime in seconds)."""
    now = hub.now()
    lifetime = ttl or hub.config.access_token_ttl
    iat = int(now.timestamp())
    exp = int((now + lifetime).timestamp())
    claims: dict[str, Any] = {
        "aud": audience,
        "iss": hub.issuer,
        "iat": iat,
        "nbf": iat,
        "exp": exp,
        "azp": client_id,
        "azpacr": "1",
        "idtyp": kind,
        "oid": oid,
        "sub": oid,
        "tid": hub.tenant_id,
        "uti": uuid.uuid4().hex[:22],
        "ver": "2.0",
    }
    if kind == "app":
        claims["appid"] = client_id  # v1 name of azp; what most token consumers log for apps
    if kind == "user":
        claims["scp"] = " ".join(scopes or ["user_impersonation"])
        if upn:
            claims["upn"] = upn
            claims["preferred_username"] = upn
    if name:
        claims["name"] = name
    groups = groups or []
    if len(groups) > GROUP_OVERAGE_LIMIT:
        claims["_claim_names"] = {"groups": "src1"}
        collection = "users" if kind == "user" else "directoryObjects"
        claims["_claim_sources"] = {
            "src1": {"endpoint": f"{hub.config.url}/v1.0/{collection}/{oid}/getMemberGroups"}
        }
    elif groups:
        claims["groups"] = groups
    token = jwt.encode(claims, hub.issuer_key, algorithm="RS256", headers={"kid": hub.issuer_kid})
    return token, exp - iat


def issue_id_token(
    hub: Hub, *, oid: str, client_id: str, upn: str, name: str, nonce: str | None = None
) -> str:
    """An OpenID Connect ID token for the client (`aud` = client id), shaped like Entra's v2 ID tokens;
    `nonce` is the authorization request's, echoed for the client to check."""
    now = hub.now()
    iat = int(now.timestamp())
    claims: dict[str, Any] = {
        "aud": client_id,
        "iss": hub.issuer,
        "iat": iat,
        "nbf": iat,
        "exp": int((now + ID_TOKEN_TTL).timestamp()),
        "oid": oid,
        "sub": oid,
        "tid": hub.tenant_id,
        "preferred_username": upn,
        "name": name,
        "uti": uuid.uuid4().hex[:22],
        "ver": "2.0",
    }
    if nonce:
        claims["nonce"] = nonce
    return jwt.encode(claims, hub.issuer_key, algorithm="RS256", headers={"kid": hub.issuer_kid})


def client_info(hub: Hub, oid: str) -> str:
    """Entra's `client_info`: base64url JSON naming the account (msal keys its cache on it)."""
    raw = json.dumps({"uid": oid, "utid": hub.tenant_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass(frozen=True)
class RefreshGrant:
    oid: str
    client_id: str
    scopes: list[str]
    credential: str  # fingerprint of the user's credential when the grant was made
    expires_at: int


class RefreshTokenError(HubError):
    """Not a refresh token of this hub (malformed, forged, or sealed with another key)."""


class RefreshTokenExpired(RefreshTokenError):
    """One of ours, past its expiry."""


def issue_refresh_token(hub: Hub, *, oid: str, client_id: str, scopes: list[str], credential: str) -> str:
    exp = int((hub.now() + REFRESH_TOKEN_TTL).timestamp())
    grant = {
        "v": 1,
        "tid": hub.tenant_id,
        "oid": oid,
        "cid": client_id,
        "scp": scopes,
        "cv": credential,
        "exp": exp,
    }
    return _REFRESH_PREFIX + hub.box.seal(json.dumps(grant, separators=(",", ":")).encode()).decode()


def read_refresh_token(hub: Hub, token: str) -> RefreshGrant:
    """Open a refresh token; RefreshTokenError if it is not one of ours or has expired."""
    if not token.startswith(_REFRESH_PREFIX):
        raise RefreshTokenError("not a refresh token issued by this hub")
    try:
        grant = json.loads(hub.box.open(token[len(_REFRESH_PREFIX) :].encode()))
        parsed = RefreshGrant(
            oid=str(grant["oid"]),
            client_id=str(grant["cid"]),
            scopes=[str(s) for s in grant["scp"]],
            credential=str(grant["cv"]),
            expires_at=int(grant["exp"]),
        )
        tenant = grant["tid"]
    except (SecretError, ValueError, KeyError, TypeError):  # not sealed by us, not JSON, not a grant
        raise RefreshTokenError("not a refresh token issued by this hub") from None
    if tenant != hub.tenant_id:
        raise RefreshTokenError("refresh token was issued for another tenant")
    if parsed.expires_at <= hub.now().timestamp():
        raise RefreshTokenExpired("refresh token has expired")
    return parsed
