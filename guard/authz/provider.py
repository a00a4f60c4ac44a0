"""`AzureAuthorizer`: answers a SubjectAccessReview from Azure RBAC (ARM or the kubearc hub).

Order follows guard (REFERENCE §2): `system:` users, skip-listed users and groups
and users without `extra.oid` get NoOpinion (the last configurable to Deny), so
Kubernetes RBAC keeps deciding for them; discovery reads are allowed; everything
else is mapped to a data action and asked of checkAccess. The answer is Allowed
only when every decision is Allowed; a deny assignment is a Deny; plain
NotAllowed is NoOpinion by default (Kubernetes RBAC may still grant it, as on
Arc) or Deny. When checkAccess is slow, down, throttled or the breaker is open,
the configured failure policy answers, with the reason (`unavailable`, the one
place it is applied; the review endpoint asks it too when its deadline passes).
`AuthorizerConfig` holds these rules exactly as the flags give them;
`guard/authz/options.py` adds how to reach checkAccess and builds the pair.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from guard.authz.actions import CONNECTED_CLUSTERS, ActionMapper, Mapped, Wildcards
from guard.authz.checkaccess import AccessDecision, CheckAccessClient, CheckAccessError
from guard.interfaces import FailurePolicy, by_policy
from guard.reviews import Decision, SubjectAccessReview

log = logging.getLogger(__name__)

# Each entry matches the path itself and everything below it (`/apis` matches `/apis/apps/v1`,
# not `/apisx`).
DISCOVERY_PATHS = ("/api", "/apis", "/openapi", "/version", "/healthz", "/livez", "/readyz")
DISCOVERY_VERBS = frozenset({"get", "head"})


@dataclass(frozen=True)
class AuthorizerConfig:
    """The rules of one cluster's authorizer (`--cluster-resource-id`, `--skip-user`, ... as given)."""

    cluster_resource_id: str  # normalised: no surrounding blanks or trailing slash
    cluster_type: str = CONNECTED_CLUSTERS  # the ARM type, e.g. Microsoft.Kubernetes/connectedClusters
    skip_users: frozenset[str] = frozenset()
    skip_groups: frozenset[str] = frozenset()
    oid_key: str = "oid"
    without_oid: FailurePolicy = "noopinion"
    discovery_paths: tuple[str, ...] = DISCOVERY_PATHS
    not_allowed: FailurePolicy = "noopinion"
    unmappable: FailurePolicy = "deny"
    failure: FailurePolicy = "noopinion"
    wildcards: Wildcards = "literal"
    extra_skip_prefixes: tuple[str, ...] = field(default=("system:",))

    def __post_init__(self) -> None:
        object.__setattr__(self, "cluster_resource_id", self.cluster_resource_id.strip().rstrip("/"))


@functools.lru_cache(maxsize=65536)
def _object_id(group: str) -> str | None:
    """A group name as a canonical object id, or None; cached: the same groups come in every review."""
    try:
        return str(uuid.UUID(group))
    except ValueError:
        return None


def security_groups(groups: list[str]) -> tuple[str, ...]:
    """Only Entra group object ids go to checkAccess (as guard's getValidSecurityGroups): the
    apiserver adds `system:authenticated` and friends, which ARM would reject. Sorted, lower case."""
    return _security_groups(tuple(groups))


@functools.lru_cache(maxsize=16384)
def _security_groups(groups: tuple[str, ...]) -> tuple[str, ...]:
    # Cached per group list: a user's reviews all carry the same one.
    return tuple(sorted({oid for group in groups if (oid := _object_id(group)) is not None}))


def is_discovery(path: str, prefixes: tuple[str, ...]) -> bool:
    path = path.rstrip("/") or "/"
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


class AzureAuthorizer:
    """One per cluster; shares one `CheckAccessClient` (and so one cache) across reviews."""

    def __init__(
        self,
        config: AuthorizerConfig,
        client: CheckAccessClient,
        *,
        credential_name: str = "",
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.credential_name = credential_name  # what signs the checkAccess calls, for logs (never a secret)
        self._on_close = on_close  # the credential's and the identity store's resources
        self.mapper = ActionMapper(config.cluster_resource_id, config.cluster_type, config.wildcards)

    async def ready(self) -> None:
        """Get one checkAccess token now, so a bad credential shows on /readyz, not in reviews."""
        await self.client.credential()

    async def aclose(self) -> None:
        await self.client.aclose()
        if self._on_close is not None:
            self._on_close()

    def unavailable(self, reason: str, error: str = "") -> Decision:
        return by_policy(self.config.failure, reason, error)

    async def authorize(self, review: SubjectAccessReview, deadline: float) -> Decision:
        plan = self._plan(review)
        if isinstance(plan, Decision):
            return plan
        oid, groups, mapped = plan
        try:
            decisions = await self.client.check(oid, groups, mapped.scope, [mapped.action], deadline)
        except CheckAccessError as exc:
            return self.unavailable(exc.reason, str(exc))
        return self._conclude(mapped, decisions)

    def decide_now(self, review: SubjectAccessReview) -> Decision | None:
        """The answer when it needs no checkAccess call (skipped users, discovery, a cached decision),
        else None. Synchronous, so the server answers these without setting up a deadline."""
        plan = self._plan(review)
        if isinstance(plan, Decision):
            return plan
        oid, groups, mapped = plan
        hit = self.client.cached(oid, groups, mapped.action, mapped.scope)
        return None if hit is None else self._conclude(mapped, [hit])

    def _plan(self, review: SubjectAccessReview) -> Decision | tuple[str, tuple[str, ...], Mapped]:
        """A decision without checkAccess, or what to ask it: (oid, security groups, action and scope)."""
        cfg = self.config
        if review.user.startswith(cfg.extra_skip_prefixes):
            return Decision.no_opinion(f"user {review.user!r} is a system user; Azure RBAC has no opinion")
        if review.user in cfg.skip_users:
            return Decision.no_opinion(f"user {review.user!r} is skipped by configuration")
        skipped = cfg.skip_groups.intersection(review.groups)
        if skipped:
            return Decision.no_opinion(f"group {sorted(skipped)[0]!r} is skipped by configuration")
        oids = review.extra.get(cfg.oid_key) or []
        if len(oids) != 1 or not oids[0]:
            reason = f"user {review.user!r} has no Entra object id (extra.{cfg.oid_key})"
            return by_policy(cfg.without_oid, reason)
        nra = review.non_resource
        discovery = nra is not None and nra.verb.lower() in DISCOVERY_VERBS
        if nra is not None and discovery and is_discovery(nra.path, cfg.discovery_paths):
            return Decision.allow(f"discovery path {nra.path!r} is allowed for every Entra user")
        mapped = self.mapper.map(review)
        if not isinstance(mapped, Mapped):
            return by_policy(cfg.unmappable, f"no Azure data action: {mapped.reason}")
        return oids[0], security_groups(review.groups), mapped

    def _conclude(self, mapped: Mapped, decisions: list[AccessDecision]) -> Decision:
        where = f"{mapped.action} at {mapped.scope}"
        if decisions and all(d.allowed for d in decisions):
            return Decision.allow(f"Azure RBAC allows {where}")
        if any(d.denied for d in decisions):
            return Decision.deny(f"an Azure deny assignment denies {where}")
        return by_policy(self.config.not_allowed, f"no Azure role assignment grants {where}")
