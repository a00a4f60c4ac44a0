"""guard's exceptions: one root, so a caller catches guard's own failures and nothing else.

```
GuardError                    every failure guard raises on purpose
├── OptionsError              a provider's options do not hold together; `.flag` names the flag
├── ReviewError               a review body that is not a TokenReview / SubjectAccessReview (HTTP 400)
├── RequestInfoError          (`guard/impersonation/requestinfo.py`) a proxied path names no resource
├── AuthenticationError       a token is refused; `.reason` says why (never the token)
│   └── BearerTokenError      the proxy's request has no usable `Authorization: Bearer` header
├── AuthorizationError        Azure RBAC gave no answer; the authorizer's failure policy answers
│   └── CheckAccessError      (`guard/authz/checkaccess.py`) checkAccess failed; `.kind` says how
├── CredentialError           the Entra app got no token for checkAccess (an identity store's own
│                             failure is `foundation.agenttoken.IdentityUnavailable`)
├── NotReady                  a start-up step failed; `/readyz` shows the message
├── UpstreamError             the apiserver broke a proxied exchange half-way
└── Refused                   (`guard/impersonation/proxy.py`) answer the proxy's client with a Status
```

The ones a caller may know as builtins subclass them too (`OptionsError`,
`ReviewError`, `BearerTokenError`, `RequestInfoError` are `ValueError`s).
Builtin exceptions are left to bugs and to the libraries that raise them: inside
guard a refusal, an outage or a bad flag is always one of these, so the review
endpoints can turn exactly these into answers and let a bug be logged as one.
"""

from __future__ import annotations


class GuardError(Exception):
    """The root of everything guard raises on purpose."""


class OptionsError(GuardError, ValueError):
    """A provider's options are inconsistent; the command line shows it as a usage error of `flag`."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag
        self.message = message


class ReviewError(GuardError, ValueError):
    """A request body that is not the review it claims to be (answered with HTTP 400)."""


class AuthenticationError(GuardError):
    """The token was refused; the message says why (never the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BearerTokenError(AuthenticationError, ValueError):
    """No single `Authorization: Bearer <token>` header (the message never echoes the token)."""


class AuthorizationError(GuardError):
    """An authorizer could not decide; `reason` goes to the apiserver, the message to evaluationError."""

    reason = "authorization failed"


class CredentialError(GuardError):
    """No bearer token for checkAccess; the message says why (never a secret or a token)."""


class NotReady(GuardError):
    """A start-up step failed; the message names the step and why."""


class UpstreamError(GuardError):
    """The apiserver connection broke, or closed, in the middle of a proxied response."""
