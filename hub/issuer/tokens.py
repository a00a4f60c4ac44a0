"""Entra-shaped access tokens signed by the local issuer.

Claims follow Entra ID v2 access tokens (`oid`, `tid`, `sub`, `azp`, `idtyp`,
`preferred_username`, `upn`, `scp`/`roles`, `groups`), so guard and the hub run
the same code on tokens from Entra and from the hub. Above `GROUP_OVERAGE_LIMIT`
groups the token carries the overage claims instead of `groups`, as Entra does.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

import jwt

from hub.context import Hub

GROUP_OVERAGE_LIMIT = 200


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
        claims["_claim_sources"] = {
            "src1": {"endpoint": f"{hub.config.url}/v1.0/users/{oid}/getMemberGroups"}
        }
    elif groups:
        claims["groups"] = groups
    token = jwt.encode(claims, hub.issuer_key, algorithm="RS256", headers={"kid": hub.issuer_kid})
    return token, exp - iat
