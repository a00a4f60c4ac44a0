"""How Entra-shaped claims become a Kubernetes user, for every OIDC authenticator.

Providers raise `AuthenticationError(reason)` (`guard/errors.py`): the server
answers it as HTTP 200 `authenticated: false` with the reason, which must never
contain the token. What an authenticator promises is `guard/interfaces.py`.
"""

from __future__ import annotations

from typing import Any

from guard.errors import AuthenticationError
from guard.reviews import UserInfo

__all__ = ["AuthenticationError", "token_audiences", "user_from_claims"]


def user_from_claims(claims: dict[str, Any], groups: list[str]) -> UserInfo:
    """guard's mapping: username = upn (then preferred_username, then oid), uid = oid, extra.oid."""
    oid = claims.get("oid")
    if not isinstance(oid, str) or not oid:
        raise AuthenticationError("token has no oid claim")
    username = next(
        (v for v in (claims.get("upn"), claims.get("preferred_username")) if isinstance(v, str) and v), oid
    )
    return UserInfo(username=username, uid=oid, groups=groups, extra={"oid": [oid]})


def token_audiences(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    return [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []
