"""Verifying bearer JWTs from an OpenID issuer (Entra ID or the hub's local issuer).

The verifier reads `/.well-known/openid-configuration`, fetches the JWKS it names,
and verifies signature, issuer, audience and lifetime with PyJWT. A token signed
with an unknown `kid` triggers one JWKS refresh, at most once per
`min_refresh_interval`, so key rotation works and a flood of bad kids cannot turn
into a flood of JWKS fetches.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from foundation.tokens import check_claim_types, check_header_types
from foundation.wire import ENTRA_AUTHORITY

ALLOWED_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


def entra_issuers(tenant_id: str) -> list[str]:
    """The v2 and v1 issuer URLs of an Entra tenant."""
    return [f"{ENTRA_AUTHORITY}/{tenant_id}/v2.0", f"https://sts.windows.net/{tenant_id}/"]


def discovery_url(issuer: str) -> str:
    """Where an issuer's OpenID metadata lives (Entra v1 issuers share the v2 keys)."""
    if issuer.startswith("https://sts.windows.net/"):
        tenant = issuer.rstrip("/").rsplit("/", 1)[-1]
        return f"{ENTRA_AUTHORITY}/{tenant}/v2.0/.well-known/openid-configuration"
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


class TokenError(Exception):
    """A bearer token was refused; the message names why (never the token)."""


@dataclass
class OidcVerifier:
    issuer: str
    audiences: list[str]
    verify: str | bool = True  # CA bundle path for self-signed issuers
    leeway: int = 60
    min_refresh_interval: float = 30.0
    http_timeout: float = 5.0
    _keys: dict[str, jwt.PyJWK] = field(default_factory=dict, repr=False)
    _fetched_at: float = field(default=0.0, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _static: bool = field(default=False, repr=False)

    @classmethod
    def with_keys(cls, issuer: str, audiences: list[str], jwks: dict[str, Any]) -> OidcVerifier:
        """A verifier for an issuer whose keys are known in-process (never fetched)."""
        verifier = cls(issuer, audiences)
        verifier._keys = {k["kid"]: jwt.PyJWK(k) for k in jwks["keys"]}
        verifier._static = True
        return verifier

    async def _refresh(self) -> None:
        verify = (
            ssl.create_default_context(cafile=self.verify) if isinstance(self.verify, str) else self.verify
        )
        async with httpx.AsyncClient(verify=verify, timeout=self.http_timeout) as client:
            meta = (await client.get(discovery_url(self.issuer))).raise_for_status().json()
            jwks = (await client.get(meta["jwks_uri"])).raise_for_status().json()
        keys: dict[str, jwt.PyJWK] = {}
        for entry in jwks.get("keys", []):
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWKError:
                continue  # keys of types we do not use (e.g. enc keys) are skipped
            if entry.get("kid"):
                keys[entry["kid"]] = key
        self._keys = keys
        self._fetched_at = time.monotonic()

    async def _key(self, kid: str) -> jwt.PyJWK:
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            if (
                kid not in self._keys
                and not self._static
                and (not self._fetched_at or time.monotonic() - self._fetched_at >= self.min_refresh_interval)
            ):
                try:
                    await self._refresh()
                except (httpx.HTTPError, KeyError, ValueError) as exc:
                    raise TokenError(f"cannot fetch signing keys of {self.issuer}: {exc}") from None
        if kid not in self._keys:
            raise TokenError(f"token signed with unknown key id {kid!r}")
        return self._keys[kid]

    async def verify_token(self, token: str) -> dict[str, Any]:
        try:
            unverified = jwt.api_jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"malformed token: {exc}") from None
        header = unverified["header"]
        try:
            check_header_types(header)
            check_claim_types(unverified["payload"])
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise TokenError(f"token algorithm {alg!r} is not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenError("token header has no key id (kid)")
        key = await self._key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                # The key decides the algorithm: a token claiming another one (HS256 with the
                # public key as secret, ES256 against an RSA key) is refused, never tried.
                algorithms=[key.algorithm_name],
                audience=self.audiences,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        return claims


def unverified_issuer(token: str) -> str:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"malformed token: {exc}") from None
    iss = claims.get("iss")
    if not isinstance(iss, str):
        raise TokenError("token has no issuer")
    return iss
