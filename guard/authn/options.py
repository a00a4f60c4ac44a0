"""The token authenticator's options: which issuers, audiences and token file, Graph for overage.

`validate()` raises an `OptionsError` naming the flag to fix; `build()` makes
the `AuthnChain`: one verifier per Entra tenant (its v1 and v2 issuers), one for
the other OIDC issuers (the hub's local issuer), the token file, and the Graph
client that resolves group overage when `--graph-client-id` is given (close it
with the chain's `aclose()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from foundation.wire import ENTRA_AUTHORITY
from guard.authn.chain import AuthnChain
from guard.authn.graph import GRAPH_BASE, GraphGroups, GraphSettings
from guard.authn.oidc import OidcAuthenticator
from guard.authn.static import StaticTokens
from guard.errors import OptionsError

GRAPH_SECRET_ENV = "KUBEARC_GUARD_GRAPH_CLIENT_SECRET"


@dataclass(frozen=True)
class AuthnOptions:
    entra_tenants: tuple[str, ...] = ()
    issuers: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    issuer_ca: str | None = None  # CA bundle of a self-signed issuer and its Graph
    token_file: Path | None = None
    graph_client_id: str | None = None
    graph_client_secret: str | None = field(default=None, repr=False)
    graph_authority: str | None = None  # default: the first Entra tenant, else the first issuer
    graph_url: str | None = None
    oidc_only: bool = False  # no --token-file here (`guard proxy`): an issuer is required

    def validate(self) -> None:
        if (self.entra_tenants or self.issuers) and not self.audiences:
            raise OptionsError("--audience", "give the accepted token audience")
        if self.oidc_only and not (self.entra_tenants or self.issuers):
            raise OptionsError("--issuer", "give --entra-tenant or --issuer")
        if not (self.entra_tenants or self.issuers or self.token_file):
            raise OptionsError("--issuer", "give --entra-tenant, --issuer or --token-file")
        if self.graph_client_id and not self.graph_client_secret:
            raise OptionsError("--graph-client-id", f"set ${GRAPH_SECRET_ENV}")
        if self.issuer_ca is not None and not Path(self.issuer_ca).is_file():
            raise OptionsError("--issuer-ca", f"{self.issuer_ca} is not a readable file")

    def build(self) -> AuthnChain:
        graph = self._graph()
        audiences = list(self.audiences)
        providers = [
            OidcAuthenticator.entra(t, audiences, ca_file=self.issuer_ca, graph=graph)
            for t in self.entra_tenants
        ]
        if self.issuers:
            providers.append(
                OidcAuthenticator(list(self.issuers), audiences, ca_file=self.issuer_ca, graph=graph)
            )
        return AuthnChain(providers, StaticTokens.load(self.token_file) if self.token_file else None)

    def _graph(self) -> GraphGroups | None:
        if not self.graph_client_id or not self.graph_client_secret:
            return None
        authority = self.graph_authority or (
            f"{ENTRA_AUTHORITY}/{self.entra_tenants[0]}" if self.entra_tenants else self.issuers[0]
        )
        return GraphGroups(
            GraphSettings(
                client_id=self.graph_client_id,
                client_secret=self.graph_client_secret,
                authority=authority,
                oidc_authority=not authority.startswith(ENTRA_AUTHORITY),
                base_url=self.graph_url or GRAPH_BASE,
                ca_file=self.issuer_ca,
            )
        )
