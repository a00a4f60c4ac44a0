"""An async client for Azure's checkAccess, the same wire format against ARM and the kubearc hub.

`POST {base}{scope}/providers/Microsoft.Authorization/checkaccess?api-version=2018-09-01-preview`
with `{"Subject":{"Attributes":{"ObjectId","Groups"}},"Actions":[...],"Resource":{"Id"}}`;
the answer is one decision per action. What it does better than guard:

- decisions are cached per (oid, sorted groups, action, scope) for the decision's
  own `timeToLiveInMs`, capped separately for allow and for deny, so a new grant
  or a revocation is not hidden behind one long TTL;
- `Retry-After` is honoured: no call goes out before it (callers fail fast);
- a circuit breaker fails fast for a cool-down after N consecutive failures, so an
  outage does not turn every review into a slow timeout;
- identical questions asked at once share one request;
- every call takes an absolute deadline (`time.monotonic()`) and never waits past it.

The injectable `clock` drives cache expiry, `Retry-After` and the breaker (tests
move it); deadlines always use the real monotonic clock.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import httpx

from guard.errors import AuthorizationError

API_VERSION = "2018-09-01-preview"
MAX_ACTIONS = 200
CHECKACCESS_PATH = "/providers/Microsoft.Authorization/checkaccess"
ARM = "https://management.azure.com"

Credential = Callable[[], Awaitable[str]]
Clock = Callable[[], float]
FailureKind = Literal["deadline", "unavailable", "throttled", "breaker-open", "http", "bad-response"]


class CheckAccessError(AuthorizationError):
    """checkAccess gave no usable answer; `kind` says which way it failed (for metrics and reasons)."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(f"checkAccess {kind}: {message}")
        self.kind = kind
        self.reason = f"Azure RBAC unavailable ({kind})"


@dataclass(frozen=True)
class AccessDecision:
    action: str
    decision: str  # "Allowed", "NotAllowed" or "Denied" (a deny assignment)
    ttl: float  # seconds this answer may be reused

    @property
    def allowed(self) -> bool:
        return self.decision == "Allowed"

    @property
    def denied(self) -> bool:
        return self.decision == "Denied"


CacheKey = tuple[str, tuple[str, ...], str, str]


def cache_key(oid: str, groups: Sequence[str], action: str, scope: str) -> CacheKey:
    """Everything the answer depends on; ids and paths compare case-insensitively in ARM."""
    return (oid.lower(), _canonical_groups(tuple(groups)), action.lower(), scope.lower().rstrip("/"))


@functools.lru_cache(maxsize=16384)
def _canonical_groups(groups: tuple[str, ...]) -> tuple[str, ...]:
    # Cached: the same few group lists come with every review.
    return tuple(sorted({g.lower() for g in groups}))


@dataclass
class _Breaker:
    threshold: int
    cooldown: float
    failures: int = 0
    open_until: float = 0.0

    def check(self, now: float) -> None:
        if self.failures >= self.threshold and now < self.open_until:
            raise CheckAccessError(
                "breaker-open",
                f"{self.failures} consecutive failures; not calling for {self.open_until - now:.1f}s more",
            )

    def success(self) -> None:
        self.failures = 0

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = now + self.cooldown


def _retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_wall)


class CheckAccessClient:
    """One client per target (ARM or a hub); safe to share between concurrent reviews."""

    def __init__(
        self,
        base_url: str,
        credential: Credential,
        *,
        ca_file: str | None = None,
        allow_ttl_cap: float = 300.0,
        deny_ttl_cap: float = 30.0,
        default_retry_after: float = 10.0,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 30.0,
        max_cache_entries: int = 50_000,
        clock: Clock = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
        event_hooks: dict[str, list[Callable[..., Any]]] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.credential = credential
        self.allow_ttl_cap = allow_ttl_cap
        self.deny_ttl_cap = deny_ttl_cap
        self.default_retry_after = default_retry_after
        self.max_cache_entries = max_cache_entries
        self.clock = clock
        self._breaker = _Breaker(breaker_threshold, breaker_cooldown)
        self._not_before = 0.0
        self._cache: dict[CacheKey, tuple[float, AccessDecision]] = {}
        # Identical questions in flight share one request (single-flight).
        self._inflight: dict[tuple[object, ...], asyncio.Future[list[AccessDecision]]] = {}
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self._http = httpx.AsyncClient(
            verify=verify, transport=transport, event_hooks=event_hooks, follow_redirects=False
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def url(self, scope: str) -> str:
        path = quote("/" + scope.strip("/"), safe="/-_.~:@")
        return f"{self.base_url}{path}{CHECKACCESS_PATH}?api-version={API_VERSION}"

    def cached(self, oid: str, groups: Sequence[str], action: str, scope: str) -> AccessDecision | None:
        entry = self._cache.get(cache_key(oid, groups, action, scope))
        if entry is None:
            return None
        expires, decision = entry
        if self.clock() >= expires:
            return None
        return decision

    async def check(
        self, oid: str, groups: Sequence[str], scope: str, actions: Sequence[str], deadline: float
    ) -> list[AccessDecision]:
        """One decision per action, in order; cached answers are reused, the rest asked in batches."""
        result: dict[str, AccessDecision] = {}
        missing: list[str] = []
        for action in dict.fromkeys(actions):
            hit = self.cached(oid, groups, action, scope)
            if hit is not None:
                result[action.lower()] = hit
            else:
                missing.append(action)
        if missing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CheckAccessError("deadline", "no time left before the review's deadline")
            key = (*cache_key(oid, groups, "", scope), tuple(a.lower() for a in missing))
            flight = self._inflight.get(key)
            if flight is None:
                now = self.clock()
                if now < self._not_before:
                    raise CheckAccessError(
                        "throttled", f"Retry-After asks to wait {self._not_before - now:.1f}s more"
                    )
                self._breaker.check(now)
                flight = asyncio.ensure_future(self._fetch(oid, groups, scope, missing, deadline))
                self._inflight[key] = flight
                flight.add_done_callback(lambda done: self._landed(key, done))
            try:
                async with asyncio.timeout(remaining):
                    answers = await asyncio.shield(flight)
            except TimeoutError:
                raise CheckAccessError("deadline", f"no answer within {remaining:.2f}s") from None
            for decision in answers:
                result[decision.action.lower()] = decision
        return [result[a.lower()] for a in actions]

    async def _fetch(
        self, oid: str, groups: Sequence[str], scope: str, actions: list[str], deadline: float
    ) -> list[AccessDecision]:
        """Ask for `actions` in batches of 200, all within the deadline of the review that started it."""
        batches = [actions[i : i + MAX_ACTIONS] for i in range(0, len(actions), MAX_ACTIONS)]
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                answers = await asyncio.gather(
                    *(self._ask(oid, groups, scope, batch, deadline) for batch in batches)
                )
        except TimeoutError:
            self._breaker.failure(self.clock())
            raise CheckAccessError("deadline", "no answer before the deadline") from None
        out = [decision for batch in answers for decision in batch]
        for decision in out:
            self._store(oid, groups, scope, decision)
        return out

    def _landed(self, key: tuple[object, ...], flight: asyncio.Future[list[AccessDecision]]) -> None:
        if self._inflight.get(key) is flight:
            del self._inflight[key]
        if not flight.cancelled():
            flight.exception()  # retrieved here, so a failure every waiter left behind is not logged

    def _store(self, oid: str, groups: Sequence[str], scope: str, decision: AccessDecision) -> None:
        if decision.ttl <= 0:
            return
        if len(self._cache) >= self.max_cache_entries:
            now = self.clock()
            for key in [k for k, (exp, _) in self._cache.items() if exp <= now]:
                del self._cache[key]
            while len(self._cache) >= self.max_cache_entries:
                del self._cache[next(iter(self._cache))]
        key = cache_key(oid, groups, decision.action, scope)
        self._cache[key] = (self.clock() + decision.ttl, decision)

    async def _ask(
        self, oid: str, groups: Sequence[str], scope: str, actions: list[str], deadline: float
    ) -> list[AccessDecision]:
        body = {
            "Subject": {"Attributes": {"ObjectId": oid, "Groups": list(groups)}},
            "Actions": [{"Id": a, "IsDataAction": True, "Attributes": {}} for a in actions],
            "Resource": {"Id": scope},
        }
        try:
            token = await self.credential()
        except Exception as exc:  # msal, key files, ...: no token is an outage of ours, not of ARM's
            raise CheckAccessError("unavailable", f"no bearer token: {type(exc).__name__}: {exc}") from None
        try:
            response = await self._http.post(
                self.url(scope),
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=max(0.001, deadline - time.monotonic()),
            )
        except httpx.TimeoutException:
            self._breaker.failure(self.clock())
            raise CheckAccessError("deadline", "the request timed out") from None
        except httpx.HTTPError as exc:
            self._breaker.failure(self.clock())
            raise CheckAccessError("unavailable", f"{type(exc).__name__}: {exc}") from None
        if response.status_code == 429 or response.status_code >= 500:
            now = self.clock()
            self._breaker.failure(now)
            wait = _retry_after(response.headers.get("Retry-After"), time.time())
            if response.status_code == 429 or wait is not None:
                self._not_before = max(self._not_before, now + (wait or self.default_retry_after))
            kind: FailureKind = "throttled" if response.status_code == 429 else "unavailable"
            raise CheckAccessError(kind, f"HTTP {response.status_code}: {response.text[:200]}")
        if response.status_code != 200:
            raise CheckAccessError("http", f"HTTP {response.status_code}: {response.text[:300]}")
        self._breaker.success()
        return self._parse(response, actions)

    def _parse(self, response: httpx.Response, actions: list[str]) -> list[AccessDecision]:
        try:
            doc = response.json()
        except ValueError:
            raise CheckAccessError("bad-response", "the answer is not JSON") from None
        if isinstance(doc, dict) and isinstance(doc.get("value"), list):
            doc = doc["value"]
        if not isinstance(doc, list) or len(doc) != len(actions):
            raise CheckAccessError("bad-response", f"expected a list of {len(actions)} decisions")
        by_id = {a.lower(): a for a in actions}
        out: list[AccessDecision] = []
        for i, item in enumerate(doc):
            if not isinstance(item, dict):
                raise CheckAccessError("bad-response", f"decision {i} is not an object")
            returned = item.get("actionId")
            action = by_id.get(returned.lower(), actions[i]) if isinstance(returned, str) else actions[i]
            decision = item.get("accessDecision")
            if not isinstance(decision, str):
                raise CheckAccessError("bad-response", f"decision {i} has no accessDecision")
            allowed = decision == "Allowed"
            cap = self.allow_ttl_cap if allowed else self.deny_ttl_cap
            ttl_ms = item.get("timeToLiveInMs")
            ttl = cap
            if isinstance(ttl_ms, int | float) and not isinstance(ttl_ms, bool):
                ttl = max(0.0, min(cap, ttl_ms / 1000))
            out.append(AccessDecision(action, decision, ttl))
        if {d.action for d in out} != set(actions):
            raise CheckAccessError("bad-response", "the decisions do not answer the actions asked")
        return out
