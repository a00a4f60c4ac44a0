"""TokenReview authentication: Entra ID and the hub's local issuer (OIDC), static tokens, group overage."""

from guard.authn.base import AuthenticationError, user_from_claims
from guard.authn.chain import AuthnChain
from guard.authn.graph import GraphGroups, GraphSettings
from guard.authn.oidc import OidcAuthenticator
from guard.authn.options import AuthnOptions
from guard.authn.static import StaticTokens

__all__ = [
    "AuthenticationError",
    "AuthnChain",
    "AuthnOptions",
    "GraphGroups",
    "GraphSettings",
    "OidcAuthenticator",
    "StaticTokens",
    "user_from_claims",
]
