"""What guard's endpoints ask of a token authenticator and of an authorizer, and nothing more.

The review endpoints (`guard/app.py`) and the impersonating proxy
(`guard/impersonation/proxy.py`) call only the methods declared here, the way
kubeguard's endpoints call only `auth.Interface` and `authz.Interface`; which
provider answers is decided once, where the command line builds it from its
options. Each Protocol has a fast path that answers without awaiting (a token
verified before, a cached or local decision): a provider with nothing to answer
there returns None, and the endpoint goes on to the full check. Guard's
throughput rests on those fast paths, so they stay plain synchronous calls.

The failure policy is one choice, NoOpinion or Deny (`FailurePolicy`), and the
authorizer owns it: its `unavailable` is the one answer for a review it could
not decide, whether its own backend failed or the endpoint's deadline passed.
The endpoint keeps only the deadline.

"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from guard.reviews import Decision, SubjectAccessReview, UserInfo

FailurePolicy = Literal["noopinion", "deny"]
FAILURE_POLICIES: tuple[FailurePolicy, ...] = ("noopinion", "deny")


def by_policy(policy: FailurePolicy, reason: str, error: str = "") -> Decision:
    """The answer a policy gives: Deny (stop the authorizer chain) or NoOpinion (the next one decides)."""
    if policy == "deny":
        return Decision(denied=True, reason=reason, evaluation_error=error)
    return Decision.no_opinion(reason, error)


@dataclass(frozen=True)
class Authenticated:
    user: UserInfo
    audiences: list[str]  # what the token is for (empty for static tokens)
    cached: bool = False


class Authenticator(Protocol):
    def cached(self, token: str) -> Authenticated | None:
        """The answer for a token verified before, without awaiting; None: call `review`."""

    async def review(self, token: str, audiences: list[str]) -> Authenticated:
        """Verify the token; raises `AuthenticationError(reason)` when it is refused."""


class Authorizer(Protocol):
    def decide_now(self, review: SubjectAccessReview) -> Decision | None:
        """The decision when it needs no I/O (skipped users, discovery, a cached answer), else None."""

    async def authorize(self, review: SubjectAccessReview, deadline: float) -> Decision:
        """The decision by `deadline` (`time.monotonic()`); a backend failure is answered by the policy."""

    def unavailable(self, reason: str, error: str = "") -> Decision:
        """The failure policy's answer, for a review this authorizer could not decide."""


class NoAuthorizer:
    """Authentication-only mode: every SubjectAccessReview is NoOpinion (Kubernetes RBAC decides)."""

    ANSWER = Decision.no_opinion("kubearc guard has no authorizer configured")

    def decide_now(self, review: SubjectAccessReview) -> Decision | None:
        return self.ANSWER

    async def authorize(self, review: SubjectAccessReview, deadline: float) -> Decision:
        return self.ANSWER

    def unavailable(self, reason: str, error: str = "") -> Decision:
        return Decision.no_opinion(reason, error)
