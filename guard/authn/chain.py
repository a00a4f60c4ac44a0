"""guard's `Authenticator`: pick the verifier by the token's issuer, remember valid tokens until they expire.

The cache key is the SHA-256 of the token (never the token itself). The
apiserver caches TokenReviews too (2 min), but each apiserver replica asks on
its own, and guard itself caches nothing: this cache makes repeats cost one
dict lookup instead of a signature check.
"""

from __future__ import annotations

import hashlib
import time

import jwt

from guard.authn.base import AuthenticationError, token_audiences
from guard.authn.oidc import OidcAuthenticator
from guard.interfaces import Authenticated, Authenticator
from guard.reviews import UserInfo


class AuthnChain:
    def __init__(
        self,
        oidc: list[OidcAuthenticator],
        static: Authenticator | None = None,
        *,
        max_entries: int = 100_000,
        max_ttl: float = 3600.0,
    ) -> None:
        self.by_issuer: dict[str, OidcAuthenticator] = {}
        for provider in oidc:
            for issuer in provider.issuers:
                self.by_issuer[issuer] = provider
        self.static = static
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self._cache: dict[bytes, tuple[float, Authenticated]] = {}
        self.hits = 0

    def _providers(self) -> list[OidcAuthenticator]:
        return list({id(p): p for p in self.by_issuer.values()}.values())

    async def ready(self) -> None:
        for provider in self._providers():
            await provider.ready()

    async def aclose(self) -> None:
        """Close the Graph clients of the OIDC verifiers (shared ones once)."""
        graphs = {id(p.graph): p.graph for p in self._providers() if p.graph is not None}
        for graph in graphs.values():
            await graph.aclose()

    async def authenticate(self, token: str, audiences: list[str]) -> UserInfo:
        return (await self.review(token, audiences)).user

    def cached(self, token: str) -> Authenticated | None:
        """The answer for a token verified before and not yet expired (no await: the server's fast path)."""
        key = hashlib.sha256(token.encode()).digest()
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[0] <= time.time():
            self._cache.pop(key, None)
            return None
        self.hits += 1
        return entry[1]

    async def review(self, token: str, audiences: list[str]) -> Authenticated:
        hit = self.cached(token)
        if hit is not None:
            return hit
        key = hashlib.sha256(token.encode()).digest()
        now = time.time()
        if token.count(".") != 2:
            if self.static is None:
                raise AuthenticationError("token is not a JWT")
            return await self.static.review(token, audiences)
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError(f"malformed token: {exc}") from None
        issuer = claims.get("iss")
        provider = self.by_issuer.get(issuer) if isinstance(issuer, str) else None
        if provider is None:
            raise AuthenticationError(f"token issuer {str(issuer)[:100]!r} is not trusted")
        verified = await provider.verify(token)
        result = Authenticated(await provider.user(verified), token_audiences(verified))
        exp = verified.get("exp")
        if isinstance(exp, int | float):
            hit = Authenticated(result.user, result.audiences, cached=True)  # what later reviews get
            self._store(key, min(float(exp), now + self.max_ttl), hit)
        return result

    def _store(self, key: bytes, expires: float, result: Authenticated) -> None:
        if len(self._cache) >= self.max_entries:
            now = time.time()
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            while len(self._cache) >= self.max_entries:  # still full: drop the oldest entries
                self._cache.pop(next(iter(self._cache)))
        self._cache[key] = (expires, result)
