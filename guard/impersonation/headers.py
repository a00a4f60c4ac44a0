"""What the impersonating proxy reads from and writes into HTTP headers, and the Status bodies it answers.

Pure functions over h11-style header lists (`(name, value)` byte pairs, names
lowercase on the way in), so the rules can be tested without sockets:

- a request that carries any `Impersonate-*` header is refused: only the proxy
  may say whom the apiserver should act as;
- the user's `Authorization` is replaced by the proxy's own credential, and
  `Impersonate-User`, one `Impersonate-Group` per group and one
  `Impersonate-Extra-<key>` per extra value are added, with the extra key
  percent-encoded the way client-go does (the apiserver unescapes it);
- hop-by-hop headers (RFC 9110 §7.6.1, plus those the `Connection` header names)
  never cross the proxy, except that an upgrade is re-announced upstream;
- `X-Remote-*` (the apiserver's front-proxy headers) are dropped too, so a client
  can never smuggle identity through a credential that happens to be trusted
  for them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from guard.errors import BearerTokenError
from guard.impersonation.requestinfo import RequestInfo
from guard.reviews import NonResourceAttributes, ResourceAttributes, SubjectAccessReview, UserInfo

Headers = Sequence[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"upgrade",
    }
)
IMPERSONATE_PREFIX = b"impersonate-"
FRONT_PROXY_PREFIX = b"x-remote-"
AUTHENTICATED_GROUP = "system:authenticated"
# RFC 7230 tchar: the bytes a header name may hold unescaped (client-go's legalHeaderKeyBytes).
_TCHAR = frozenset(b"!#$&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def refused_header(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The first `Impersonate-*` header a client sent (its name, for the refusal), else None."""
    for name, _ in headers:
        if name.lower().startswith(IMPERSONATE_PREFIX):
            return name.decode("latin-1")
    return None


def bearer_token(headers: Headers) -> str:
    """The bearer token of the request; `BearerTokenError` says what is wrong (never echoing the token)."""
    values = [v for n, v in headers if n.lower() == b"authorization"]
    if not values:
        raise BearerTokenError("no bearer token: send Authorization: Bearer <Entra ID token>")
    if len(values) > 1:
        raise BearerTokenError("more than one Authorization header")
    scheme, _, token = values[0].decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise BearerTokenError("the Authorization header is not a bearer token")
    return token.strip()


def connection_tokens(headers: Headers) -> set[bytes]:
    """Header names listed in `Connection` (hop-by-hop by declaration), lowercase."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def upgrade_of(headers: Headers) -> bytes | None:
    """The protocol a request asks to switch to (`Connection: upgrade` + `Upgrade`), else None."""
    if b"upgrade" not in connection_tokens(headers):
        return None
    values = [v for n, v in headers if n.lower() == b"upgrade"]
    return b", ".join(values) if values else None


def escape_extra_key(key: str) -> str:
    """client-go's headerKeyEscape: %-encode every byte that is not a token char, and `%` itself."""
    return "".join(chr(b) if b in _TCHAR and b != 0x25 else f"%{b:02X}" for b in key.encode())


def impersonation_headers(user: UserInfo) -> list[tuple[bytes, bytes]]:
    """`Impersonate-User`, one `Impersonate-Group` per group, one `Impersonate-Extra-<key>` per value."""
    out = [(b"Impersonate-User", user.username.encode())]
    out += [(b"Impersonate-Group", group.encode()) for group in user.groups]
    for key, values in sorted(user.extra.items()):
        name = ("Impersonate-Extra-" + escape_extra_key(key)).encode()
        out += [(name, value.encode()) for value in values]
    return out


def _end_to_end(headers: Headers, also_drop: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    declared = connection_tokens(headers)
    return [
        (n, v)
        for n, v in headers
        if (low := n.lower()) not in HOP_BY_HOP
        and low not in declared
        and low not in also_drop
        and not low.startswith(FRONT_PROXY_PREFIX)
    ]


def upstream_request_headers(
    headers: Headers,
    user: UserInfo,
    *,
    host: str,
    credential: str | None,
    upgrade: bytes | None,
) -> list[tuple[bytes, bytes]]:
    """The request's end-to-end headers with the user's credential swapped for the proxy's own.

    `credential` is a whole Authorization value (`Bearer ...`), or None when the proxy
    authenticates with a client certificate.
    """
    out = [(b"Host", host.encode())]
    out += _end_to_end(headers, frozenset({b"authorization", b"host"}))
    if credential:
        out.append((b"Authorization", credential.encode()))
    out += impersonation_headers(user)
    if upgrade is not None:
        out += [(b"Connection", b"Upgrade"), (b"Upgrade", upgrade)]
    return out


def downstream_response_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    """An upstream response's headers without hop-by-hop ones (h11 re-frames the body)."""
    return _end_to_end(headers)


def status_body(code: int, reason: str, message: str) -> bytes:
    """A `Status` object, the shape kubectl prints as `Error from server (<reason>): <message>`."""
    doc: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return json.dumps(doc).encode()


def access_review(info: RequestInfo, user: UserInfo) -> SubjectAccessReview:
    """The SubjectAccessReview the apiserver would send for this request from this user."""
    groups = list(dict.fromkeys([*user.groups, AUTHENTICATED_GROUP]))
    resource = non_resource = None
    if info.is_resource_request:
        resource = ResourceAttributes(
            namespace=info.namespace,
            verb=info.verb,
            group=info.api_group,
            version=info.api_version,
            resource=info.resource,
            subresource=info.subresource,
            name=info.name,
        )
    else:
        non_resource = NonResourceAttributes(path=info.path, verb=info.verb)
    return SubjectAccessReview(
        "authorization.k8s.io/v1", user.username, user.uid, groups, dict(user.extra), resource, non_resource
    )


def forbidden_message(info: RequestInfo, user: str, reason: str) -> str:
    """The apiserver's wording for a refused request (kubectl users know it), with guard's reason."""
    if not info.is_resource_request:
        text = f'forbidden: User "{user}" cannot {info.verb} path "{info.path}"'
    else:
        what = info.resource + (f"/{info.subresource}" if info.subresource else "")
        subject = what + (f' "{info.name}"' if info.name else "")
        where = f'in the namespace "{info.namespace}"' if info.namespace else "at the cluster scope"
        text = (
            f'{subject} is forbidden: User "{user}" cannot {info.verb} resource "{what}" '
            f'in API group "{info.api_group}" {where}'
        )
    return f"{text}: {reason}" if reason else text
