"""A Microsoft Graph-compatible slice of the local directory, for group overage.

Tokens with more than 200 groups carry overage claims instead of `groups`;
their consumers (guard, the hub) ask `getMemberGroups` as they would ask Graph.
Only tokens of the local issuer are accepted (the directory is that issuer's),
with the hub's audience or Graph's. Service principals may read any object;
a user may read only themself (and groups they belong to).

Paging: at most `PAGE_SIZE` ids per page. When more remain the response has
`@odata.nextLink`, an absolute URL carrying `$skiptoken`; the client sends it
with the same bearer token either as a GET or as a POST (any body is ignored),
until a page arrives without `@odata.nextLink`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from foundation.oidc import OidcVerifier, TokenError
from hub import directory
from hub.context import Hub, hub_of
from hub.errors import HubError

PAGE_SIZE = 100  # ids per getMemberGroups page; tests lower it
GRAPH_AUDIENCES = ("https://graph.microsoft.com", "00000003-0000-0000-c000-000000000000")
MAX_BODY = 64 * 1024


class GraphError(HubError):
    """A Graph-shaped answer: status, Graph error code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _not_found(ref: str) -> GraphError:
    return GraphError(
        404,
        "Request_ResourceNotFound",
        f"Resource '{ref}' does not exist or one of its queried reference-property objects are not present.",
    )


def _denied() -> GraphError:
    return GraphError(
        403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
    )


def _error_response(request: Request, exc: GraphError) -> JSONResponse:
    request_id = str(uuid.uuid4())
    body = {
        "error": {
            "code": exc.code,
            "message": exc.message,
            "innerError": {
                "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id,
                "client-request-id": request.headers.get("client-request-id", request_id),
            },
        }
    }
    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if exc.status == 401 else None
    return JSONResponse(body, status_code=exc.status, headers=headers)


@dataclass(frozen=True)
class Caller:
    oid: str
    is_app: bool
    upn: str | None


def _verifier(request: Request, hub: Hub) -> OidcVerifier:
    verifier: OidcVerifier | None = getattr(request.app.state, "graph_verifier", None)
    if verifier is None:
        audiences = [*hub.config.audiences, *GRAPH_AUDIENCES]
        verifier = OidcVerifier.with_keys(hub.issuer, audiences, {"keys": [hub.issuer_jwk()]})
        request.app.state.graph_verifier = verifier
    return verifier


async def _caller(request: Request, hub: Hub) -> Caller:
    if not hub.config.local_issuer:
        raise GraphError(404, "Request_ResourceNotFound", "This hub does not run a local directory.")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
    try:
        claims = await _verifier(request, hub).verify_token(token.strip())
    except TokenError as exc:
        raise GraphError(
            401, "InvalidAuthenticationToken", f"Access token validation failure: {exc}"
        ) from None
    oid = claims.get("oid")
    if not isinstance(oid, str) or claims.get("tid") != hub.tenant_id:
        raise GraphError(401, "InvalidAuthenticationToken", "Access token has no oid of this tenant.")
    upn = claims.get("upn") or claims.get("preferred_username")
    return Caller(oid.lower(), claims.get("idtyp") == "app", str(upn).lower() if upn else None)


def _is_self(caller: Caller, ref: str) -> bool:
    return ref.lower() in {caller.oid, caller.upn}


async def _json_body(request: Request, required: bool) -> dict[str, Any]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise GraphError(413, "Request_BadRequest", f"The request body exceeds {MAX_BODY} bytes.")
    if not body.strip():
        if required:
            raise GraphError(
                400, "Request_BadRequest", 'A JSON body {"securityEnabledOnly": bool} is required.'
            )
        return {}
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GraphError(400, "BadRequest", "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise GraphError(400, "BadRequest", "The request body must be a JSON object.")
    return data


def _skiptoken(object_id: str, offset: int, security_only: bool) -> str:
    raw = json.dumps({"id": object_id, "o": offset, "s": security_only}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_skiptoken(token: str, object_id: str) -> tuple[int, bool]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset, security_only, target = data["o"], data["s"], data["id"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise GraphError(400, "Request_BadRequest", "Invalid $skiptoken.") from None
    if (
        target != object_id
        or not isinstance(offset, int)
        or offset < 0
        or not isinstance(security_only, bool)
    ):
        raise GraphError(400, "Request_BadRequest", "Invalid $skiptoken for this object.")
    return offset, security_only


async def _member_groups(request: Request, collection: str, kinds: tuple[str, ...]) -> Response:
    hub = hub_of(request)
    ref = request.path_params["id"]
    try:
        caller = await _caller(request, hub)
        if not caller.is_app and not _is_self(caller, ref):
            raise _denied()
        skiptoken = request.query_params.get("$skiptoken")
        if request.method == "GET" and skiptoken is None:
            raise GraphError(
                405,
                "Request_BadRequest",
                "getMemberGroups is a POST action; GET only follows @odata.nextLink.",
            )
        body = await _json_body(request, required=skiptoken is None)
        async with hub.sessions() as session:
            try:
                obj = await directory.resolve(session, ref, kinds)
            except directory.DirectoryError:
                raise _not_found(ref) from None
            groups = await directory.member_groups(session, obj.id)
        if skiptoken is None:
            security_only = body.get("securityEnabledOnly")
            if not isinstance(security_only, bool):
                raise GraphError(400, "Request_BadRequest", "securityEnabledOnly must be true or false.")
            offset = 0
        else:
            offset, security_only = _read_skiptoken(skiptoken, obj.id)
    except GraphError as exc:
        return _error_response(request, exc)
    # Every group of the local directory is a security group, so securityEnabledOnly filters nothing.
    page = groups[offset : offset + PAGE_SIZE]
    doc: dict[str, Any] = {
        "@odata.context": f"{hub.config.url}/v1.0/$metadata#Collection(Edm.String)",
        "value": page,
    }
    if offset + PAGE_SIZE < len(groups):
        token = _skiptoken(obj.id, offset + PAGE_SIZE, security_only)
        doc["@odata.nextLink"] = (
            f"{hub.config.url}/v1.0/{collection}/{quote(ref, safe='@')}/getMemberGroups?$skiptoken={token}"
        )
    return JSONResponse(doc)


async def user_member_groups(request: Request) -> Response:
    return await _member_groups(request, "users", (directory.USER,))


async def object_member_groups(request: Request) -> Response:
    return await _member_groups(request, "directoryObjects", directory.KINDS)


async def get_user(request: Request) -> Response:
    hub = hub_of(request)
    ref = request.path_params["id"]
    try:
        caller = await _caller(request, hub)
        if not caller.is_app and not _is_self(caller, ref):
            raise _denied()
        async with hub.sessions() as session:
            try:
                user = await directory.resolve(session, ref, (directory.USER,))
            except directory.DirectoryError:
                raise _not_found(ref) from None
    except GraphError as exc:
        return _error_response(request, exc)
    return JSONResponse(
        {
            "@odata.context": f"{hub.config.url}/v1.0/$metadata#users/$entity",
            "id": user.id,
            "displayName": user.display_name,
            "userPrincipalName": user.login,
            "mail": None,
            "accountEnabled": True,
        }
    )


async def get_group(request: Request) -> Response:
    hub = hub_of(request)
    ref = request.path_params["id"]
    try:
        caller = await _caller(request, hub)
        async with hub.sessions() as session:
            group = await directory.get_object(session, ref, directory.GROUP)
            # Users may see groups they belong to; a 403 for the rest does not reveal which ids exist.
            if not caller.is_app and (
                group is None or group.id not in await directory.member_groups(session, caller.oid)
            ):
                raise _denied()
            if group is None:
                raise _not_found(ref)
    except GraphError as exc:
        return _error_response(request, exc)
    return JSONResponse(
        {
            "@odata.context": f"{hub.config.url}/v1.0/$metadata#groups/$entity",
            "id": group.id,
            "displayName": group.display_name,
            "securityEnabled": True,
            "mailEnabled": False,
            "groupTypes": [],
        }
    )


routes: list[BaseRoute] = [
    Route("/v1.0/users/{id}/getMemberGroups", user_member_groups, methods=["GET", "POST"]),
    Route("/v1.0/directoryObjects/{id}/getMemberGroups", object_member_groups, methods=["GET", "POST"]),
    Route("/v1.0/users/{id}", get_user, methods=["GET"]),
    Route("/v1.0/groups/{id}", get_group, methods=["GET"]),
]
