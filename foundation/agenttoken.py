"""Agent tokens for one audience, minted with the cluster's identity certificate and reused.

Every in-cluster caller of the hub (the identity and metadata agents, guard's
checkAccess credential, the connect agent) proves who it is the same way: a
short-lived agent token (`foundation.tokens`) signed with the identity key.
`AgentTokens` is the one source of them: it mints a token for its audience,
hands out the same one until `margin` seconds before it expires, and mints anew
when the certificate changes.

The identity comes from an `IdentityStore`, read again at least every
`reload_after` seconds and whenever a token is due, so a certificate renewed by
`kubearc agent identity` is picked up without a restart; a passing read failure
keeps the token in hand while it is still good. A caller that holds the
certificate itself (the identity agent, which writes the store) gives it with
`use(pair)` and takes tokens synchronously with `current()`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from foundation import pki, tokens
from foundation.identitystore import IdentityStore, StoreError
from foundation.kube import KubeError
from foundation.retry import RetriesExhausted

log = logging.getLogger("kubearc.agenttoken")

MARGIN = 60.0  # mint a new token this long before the current one expires


class IdentityUnavailable(StoreError):
    """No usable identity certificate: none stored yet, expired, or the store cannot be read."""


class AgentTokens:
    """`await tokens()` is a bearer token for `audience`; safe to share between concurrent callers."""

    def __init__(
        self,
        store: IdentityStore | None,
        audience: str,
        *,
        reload_after: float = 60.0,
        ttl: int = tokens.AGENT_TOKEN_TTL,
        margin: float = MARGIN,
    ) -> None:
        self.store = store
        self.audience = audience.rstrip("/")
        self.reload_after = reload_after
        self.ttl = ttl
        self.margin = margin
        self.pair: pki.KeyPair | None = None
        self._token = ""
        self._expires = 0.0
        self._loaded = float("-inf")
        self._lock = asyncio.Lock()
        self.mints = 0  # tokens made (tests)

    def use(self, pair: pki.KeyPair) -> None:
        """Mint with this identity from now on (a renewed certificate drops the current token)."""
        if self.pair is None or self.pair.cert != pair.cert:
            if self.pair is not None:
                log.info("identity certificate changed; minting tokens with the new one")
            self.pair = pair
            self._token = ""

    def current(self) -> str:
        """The token for the identity given to `use`, minted if due (no store read, no await)."""
        if self.pair is None:
            raise IdentityUnavailable("no identity certificate loaded")
        now = time.monotonic()
        if not self._fresh(now):
            self._token = tokens.make_agent_token(self.pair, self.audience, ttl=self.ttl)
            self._expires = now + self.ttl
            self.mints += 1
        return self._token

    def _fresh(self, now: float) -> bool:
        return bool(self._token) and now < self._expires - self.margin

    def _due(self, now: float) -> bool:
        return not self._fresh(now) or now >= self._loaded + self.reload_after

    async def __call__(self) -> str:
        if self.store is None or not self._due(time.monotonic()):
            return self.current()
        async with self._lock:
            now = time.monotonic()
            if self._due(now):
                await self._reload(self.store, now)
            return self.current()

    async def _reload(self, store: IdentityStore, now: float) -> None:
        try:
            stored = await store.load()
        except (StoreError, KubeError, RetriesExhausted, OSError) as exc:
            if self._fresh(now):  # a passing read failure: the token in hand is still good
                log.warning(
                    "cannot re-read the identity store; using the current token",
                    extra={"store": store.description, "error": str(exc)[:200]},
                )
                return
            raise IdentityUnavailable(f"cannot read the identity in {store.description}: {exc}") from None
        if stored is None:
            raise IdentityUnavailable(
                f"no identity certificate in {store.description} yet (is `kubearc agent identity` running?)"
            )
        if stored.not_after <= dt.datetime.now(dt.UTC):
            raise IdentityUnavailable(
                f"the identity certificate in {store.description} expired at {stored.not_after.isoformat()}"
            )
        self._loaded = now
        self.use(stored.pair)
