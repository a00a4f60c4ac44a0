"""Entra ID (v1 and v2 issuers of a tenant) and the hub's local issuer: one class, other issuer URLs.

Signature, issuer, audience (checked by default, unlike guard) and lifetime are
verified by `foundation.oidc.OidcVerifier`, which pins the algorithm to the key and
rate-limits JWKS refreshes on unknown key ids. Groups come from the `groups`
claim, or from Graph when the token carries overage claims instead.
"""

from __future__ import annotations

from typing import Any

import jwt

from foundation.oidc import OidcVerifier, TokenError, entra_issuers
from guard.authn.base import AuthenticationError, user_from_claims
from guard.authn.graph import GraphGroups
from guard.reviews import UserInfo

ACCEPTED_TYPES = {"JWT", "AT+JWT"}  # PoP tokens (typ=pop) are not accepted here


class OidcAuthenticator:
    def __init__(
        self,
        issuers: list[str],
        audiences: list[str],
        *,
        ca_file: str | None = None,
        leeway: int = 30,
        graph: GraphGroups | None = None,
    ) -> None:
        if not audiences:
            raise ValueError("an OIDC authenticator needs at least one audience")
        self.verifiers = {
            iss: OidcVerifier(iss, audiences, verify=ca_file or True, leeway=leeway) for iss in issuers
        }
        self.graph = graph
        self.verifications = 0  # signature checks made (the review cache should keep this low)

    @classmethod
    def entra(cls, tenant_id: str, audiences: list[str], **kwargs: Any) -> OidcAuthenticator:
        return cls(entra_issuers(tenant_id), audiences, **kwargs)

    @property
    def issuers(self) -> list[str]:
        return list(self.verifiers)

    async def ready(self) -> None:
        """Load every issuer's keys now, so the first review does not pay for discovery."""
        for verifier in self.verifiers.values():
            await verifier._refresh()

    async def verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError(f"malformed token: {exc}") from None
        typ = header.get("typ", "JWT")
        if not isinstance(typ, str) or typ.upper() not in ACCEPTED_TYPES:
            raise AuthenticationError(f"token type {str(typ)[:40]!r} is not accepted")
        verifier = self.verifiers.get(issuer) if isinstance(issuer, str) else None
        if verifier is None:
            raise AuthenticationError("token issuer is not trusted by this authenticator")
        self.verifications += 1
        try:
            return await verifier.verify_token(token)
        except TokenError as exc:
            raise AuthenticationError(str(exc)) from None

    async def authenticate(self, token: str, audiences: list[str]) -> UserInfo:
        claims = await self.verify(token)
        return await self.user(claims)

    async def user(self, claims: dict[str, Any]) -> UserInfo:
        oid = claims.get("oid")
        names = claims.get("_claim_names")
        if isinstance(names, dict) and "groups" in names and "groups" not in claims:
            if self.graph is None:
                raise AuthenticationError("token has group overage claims but no Graph access is configured")
            if not isinstance(oid, str) or not oid:
                raise AuthenticationError("token has no oid claim")
            groups = await self.graph.member_groups(oid, claims)
        else:
            raw = claims.get("groups") or []
            if not isinstance(raw, list) or not all(isinstance(g, str) for g in raw):
                raise AuthenticationError("token's groups claim is not a list of strings")
            groups = list(raw)
        return user_from_claims(claims, groups)
