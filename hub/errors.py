"""The hub's exceptions, rooted at `HubError`, and ARM-shaped API errors.

Every exception the hub raises on purpose is a `HubError`; builtins are not used
as signals between the hub's own modules (pydantic validators still raise
`ValueError`, which is how pydantic asks for it). The tree:

    HubError                    the hub's own failures
    ├── ApiError                answers a 4xx in ARM's shape: {"error": {"code", "message"}} (here)
    ├── OAuthError              answers the token endpoint's Entra-shaped error (issuer/oauth.py)
    ├── GraphError              answers a Graph-shaped error (issuer/graph.py)
    ├── RefreshTokenError       not a refresh token of this hub (issuer/tokens.py)
    │   └── RefreshTokenExpired
    ├── GrantError              a device or authorization code that yields no tokens (yet) (issuer/grants.py)
    │   ├── AuthorizationPending, SlowDown, AccessDenied, ExpiredToken   (RFC 8628)
    │   └── InvalidGrant
    │       └── AlreadyRedeemed, PkceMismatch, RedirectMismatch
    ├── SecretError             a hub secret that cannot be opened or created (secrets.py)
    ├── UnsupportedDatabase     a database URL that is neither PostgreSQL nor SQLite (store/db.py)
    └── InvalidRequest          a directory or RBAC request that cannot be honoured (here)
        ├── DirectoryError      (directory.py)
        │   ├── UnknownPrincipal
        │   └── BadCredential
        └── RbacError           (rbac/assignments.py)

Routes turn a `RefreshTokenError`, a `GrantError` or an `InvalidRequest` into their API's answer
(an `ApiError`, `OAuthError` or `GraphError`); a `SecretError` is a 500 with an
incident id (the hub runs with the wrong data key); `kubearc admin` prints an
`InvalidRequest` as one line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

M = TypeVar("M", bound=BaseModel)
MAX_BODY = 4 * 1024 * 1024


class HubError(Exception):
    """The root of the hub's exceptions."""


class ApiError(HubError):
    """An answer of the hub's ARM-shaped API: a 4xx status, an ARM error code and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class InvalidRequest(HubError, ValueError):
    """A directory or RBAC request that cannot be honoured; the message says why.

    Also a `ValueError` (it is bad input): `kubearc admin` prints a `ValueError` as a
    one-line message, and callers outside the hub catch it as one.
    """


def not_found(what: str) -> ApiError:
    return ApiError(404, "ResourceNotFound", f"{what} was not found")


def forbidden(message: str) -> ApiError:
    return ApiError(403, "AuthorizationFailed", message)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "AuthenticationFailed", message)


def bad_request(message: str, code: str = "InvalidRequestContent") -> ApiError:
    return ApiError(400, code, message)


def error_response(exc: ApiError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The answer of an `ApiError`: ARM's shape, and a Bearer challenge with a 401."""
    challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if exc.status == 401 else {}
    return JSONResponse(
        {"error": {"code": exc.code, "message": exc.message}},
        status_code=exc.status,
        headers={**challenge, **(headers or {})} or None,
    )


async def api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_json(request: Request) -> Any:
    """The JSON body every route that takes one reads: 413 too large, 400 empty or not JSON (or nested
    past the parser's depth), 415 when it is not declared `application/json`."""
    body = await request.body()
    if len(body) > MAX_BODY:
        raise ApiError(413, "RequestTooLarge", f"request body exceeds {MAX_BODY} bytes")
    if not body:
        raise bad_request("request body is empty; a JSON object was expected")
    content_type = request.headers.get("content-type", "")
    if not _is_json(content_type):
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the request body's media type {content_type or '(none)'!r} is not supported; "
            "send it as application/json",
        )
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # the parser's depth, not the hub's stack: bad input like any other
        raise bad_request("request body is nested too deeply to be a request of this API") from None


async def read_model(request: Request, model: type[M]) -> M:
    """Parse and validate a JSON body; the 400 names every bad field."""
    data = await read_json(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
        )
        raise bad_request(f"invalid request body: {problems}") from None
