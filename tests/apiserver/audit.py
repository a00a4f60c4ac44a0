"""What the stand-in saw (the last requests' headers) and the apiserver's impersonation rules.

`audited` wraps the whole ASGI app (HTTP/1.1, HTTP/2 and websocket upgrades; direct
SPDY upgrades bypass the app). It records every request (method, path, headers, the
authenticated user and whom it impersonates) in `ApiServerState.audit`, so tests can
check what reached the apiserver, and it applies what a real apiserver does with
`Impersonate-*` headers: only a user allowed to impersonate (the stand-in's own admin
credential, or a subject a ClusterRoleBinding grants `impersonate` on users, groups and
each extra) may send them; `Impersonate-Group` or `Impersonate-Extra-*` without
`Impersonate-User` is a 400; extra keys are lowercased and percent-decoded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from tests.apiserver import errors
from tests.apiserver.rbac import cluster_allows
from tests.apiserver.webhooks import deny

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from tests.apiserver.app import ApiServerState

IMPERSONATORS = frozenset({"admin"})  # users RBAC would allow to impersonate
EXTRA_PREFIX = "impersonate-extra-"


@dataclass(frozen=True)
class Impersonation:
    user: str
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Recorded:
    """One request as it reached the stand-in."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]  # names lowercase, in arrival order
    user: str | None  # whom the bearer token authenticated
    impersonated: Impersonation | None
    websocket: bool = False

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name.lower()]


class RequestLog:
    """The last `size` requests, oldest first."""

    def __init__(self, size: int = 1000) -> None:
        self._seen: deque[Recorded] = deque(maxlen=size)

    def append(self, seen: Recorded) -> None:
        self._seen.append(seen)

    def clear(self) -> None:
        self._seen.clear()

    def __iter__(self) -> Iterator[Recorded]:
        return iter(list(self._seen))

    def __len__(self) -> int:
        return len(self._seen)


def impersonation(headers: list[tuple[str, str]]) -> Impersonation | None:
    """The identity `Impersonate-*` headers ask for (as the apiserver's impersonation filter reads it)."""
    user = [v for n, v in headers if n == "impersonate-user"]
    groups = tuple(v for n, v in headers if n == "impersonate-group")
    extra: dict[str, list[str]] = {}
    for name, value in headers:
        if name.startswith(EXTRA_PREFIX):
            extra.setdefault(unquote(name[len(EXTRA_PREFIX) :]), []).append(value)
    if not user and not groups and not extra:
        return None
    if len(user) != 1 or not user[0]:
        raise errors.bad_request(
            f"requested {[*groups, *extra]} without impersonating a user"
            if not user
            else "exactly one Impersonate-User header is allowed"
        )
    return Impersonation(user[0], groups, extra)


def _bearer_user(state: ApiServerState, headers: list[tuple[str, str]]) -> str | None:
    value = next((v for n, v in headers if n == "authorization"), "")
    scheme, _, token = value.partition(" ")
    return state.user_of(token.strip()) if scheme.lower() == "bearer" else None


def _may_impersonate(state: ApiServerState, user: str, wanted: Impersonation) -> None:
    """Each impersonated attribute needs its own `impersonate` grant, as the apiserver checks them."""
    asked = [("", "users", wanted.user)]
    asked += [("", "groups", g) for g in wanted.groups]
    asked += [("authentication.k8s.io", f"userextras/{key}", key) for key in wanted.extra]
    for group, resource, name in asked:
        if not cluster_allows(state.store, user, "impersonate", group, resource):
            plural = resource.split("/")[0]
            raise errors.StatusError(
                403,
                "Forbidden",
                f'{plural} "{name}" is forbidden: User "{user}" cannot impersonate resource "{resource}" '
                f'in API group "{group}" at the cluster scope',
            )


def admit(
    state: ApiServerState, method: str, path: str, headers: list[tuple[str, str]], websocket: bool
) -> None:
    """Record one request in `state.audit`; a StatusError if it impersonates without the right to.
    `headers` have lowercase names. The ASGI wrapper and the SPDY upgrade path both call it."""
    user = _bearer_user(state, headers)
    record: dict[str, Any] = {
        "method": method,
        "path": path,
        "headers": tuple(headers),
        "user": user,
        "websocket": websocket,
    }
    try:
        wanted = impersonation(headers)
        if wanted is not None and user not in IMPERSONATORS:
            _may_impersonate(state, user or "system:anonymous", wanted)
    except errors.StatusError:
        state.audit.append(Recorded(**record, impersonated=None))
        raise
    state.audit.append(Recorded(**record, impersonated=wanted))


def audited(app: ASGIApp, state: ApiServerState) -> ASGIApp:
    """Record each request in `state.audit` and refuse impersonation by users not allowed it."""

    async def with_audit(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await app(scope, receive, send)
            return
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        try:
            admit(state, scope.get("method", "GET"), scope["path"], headers, scope["type"] == "websocket")
        except errors.StatusError as exc:
            await deny(scope, send, exc)
            return
        await app(scope, receive, send)

    return with_audit
