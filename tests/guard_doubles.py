"""Test doubles for guard's interfaces: a provider with only the slow method, made whole.

`PlainAuthenticator` and `PlainAuthorizer` give an `authenticate`- or `authorize`-only
object the whole `guard.interfaces` Protocol: no fast path, its failures answered by
the policy it is given. Only tests build providers this way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from guard.interfaces import Authenticated, FailurePolicy, by_policy
from guard.reviews import Decision, SubjectAccessReview, UserInfo


class PlainAuthenticator:
    """An `authenticate`-only provider as an `Authenticator`: no fast path, no audiences."""

    def __init__(self, authenticate: Callable[[str, list[str]], Awaitable[UserInfo]]) -> None:
        self._authenticate = authenticate

    def cached(self, token: str) -> Authenticated | None:
        return None

    async def review(self, token: str, audiences: list[str]) -> Authenticated:
        return Authenticated(await self._authenticate(token, audiences), [])


class PlainAuthorizer:
    """An `authorize`-only provider as an `Authorizer`: no fast path; `failure` answers its failures."""

    def __init__(
        self,
        authorize: Callable[[SubjectAccessReview, float], Awaitable[Decision]],
        failure: FailurePolicy = "noopinion",
    ) -> None:
        self._authorize = authorize
        self.failure = failure

    def decide_now(self, review: SubjectAccessReview) -> Decision | None:
        return None

    async def authorize(self, review: SubjectAccessReview, deadline: float) -> Decision:
        return await self._authorize(review, deadline)

    def unavailable(self, reason: str, error: str = "") -> Decision:
        return by_policy(self.failure, reason, error)
