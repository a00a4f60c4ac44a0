"""checkAccess's bearer token for ARM: an Entra app's client credentials through msal.

A kubearc hub also accepts the cluster's own agent tokens
(`foundation.agenttoken.AgentTokens`, `--identity`); ARM needs an Entra app
(`--arm-client-id`, the secret from the environment). msal caches the token;
`ClientCredential` keeps it until five minutes before it expires so a review
does not pay a thread hop for msal's cache lookup. Failures are
`CredentialError`s that never carry the secret.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from foundation.msalhttp import confidential_client
from foundation.wire import ENTRA_AUTHORITY
from guard.errors import CredentialError

ARM_SCOPE = "https://management.azure.com/.default"
MSAL_MARGIN = 300.0  # msal itself refreshes app tokens in their last five minutes


@dataclass
class ClientCredential:
    """An Entra app's token for `scope` (ARM by default) through msal client credentials."""

    client_id: str
    client_secret: str = field(repr=False)
    authority: str  # https://login.microsoftonline.com/<tenant>, or a generic OIDC issuer URL
    scope: str = ARM_SCOPE
    ca_file: str | None = None  # for a self-signed OIDC issuer (the hub's local issuer)
    timeout: float = 5.0
    _app: Any = field(default=None, init=False, repr=False)
    _token: str = field(default="", init=False, repr=False)
    _expires: float = field(default=0.0, init=False, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    @property
    def oidc_authority(self) -> bool:
        return not self.authority.lower().startswith(ENTRA_AUTHORITY)

    def _acquire(self) -> dict[str, Any]:
        if self._app is None:  # built lazily: msal fetches the authority's metadata when built
            app = (self.client_id, self.client_secret, self.authority, self.oidc_authority, self.ca_file)
            self._app = confidential_client(*app, self.timeout)
        result: dict[str, Any] = self._app.acquire_token_for_client([self.scope]) or {}
        return result

    async def __call__(self) -> str:
        if self._token and time.monotonic() < self._expires:
            return self._token
        async with self._lock:
            if self._token and time.monotonic() < self._expires:
                return self._token
            result = await asyncio.to_thread(self._acquire)
            token = result.get("access_token")
            if not isinstance(token, str) or not token:
                what = result.get("error_description") or result.get("error") or "no token in the answer"
                raise CredentialError(
                    f"msal client credentials for {self.scope}: {str(what).splitlines()[0]}"
                )
            lifetime = result.get("expires_in")
            seconds = float(lifetime) if isinstance(lifetime, int | float) else 0.0
            self._token = token
            self._expires = time.monotonic() + max(0.0, seconds - MSAL_MARGIN)
            return token

    def close(self) -> None:
        if self._app is not None:
            self._app.http_client.close()
