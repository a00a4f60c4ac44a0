"""The stand-in's HTTP surface: authentication, URL → resource routing, verbs, content types.

Paths follow the apiserver's layout:
`/api/v1[/namespaces/{ns}]/{resource}[/{name}]` for the core group and
`/apis/{group}/{version}[/namespaces/{ns}]/{resource}[/{name}]` for the others.
Every failure is a `Status` object with the apiserver's reason and code.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.apiserver import discovery, errors, tables
from tests.apiserver.resources import Registry, ResourceType
from tests.apiserver.store import ObjectStore

PUBLIC_PATHS = {"/version", "/healthz", "/livez", "/readyz"}  # system:public-info-viewer
MAX_BODY = 3 * 1024 * 1024  # the apiserver's request size limit


@dataclass
class ApiServerState:
    registry: Registry
    store: ObjectStore
    git_version: str
    server_address: str = "127.0.0.1:6443"
    tokens: dict[str, str] = field(default_factory=dict)  # bearer token → user name


@dataclass(frozen=True)
class Target:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def _json(doc: Any, status: int = 200, media_type: str = "application/json") -> Response:
    return JSONResponse(doc, status_code=status, media_type=media_type)


def _not_found() -> errors.StatusError:
    return errors.StatusError(404, "NotFound", "the server could not find the requested resource")


def _target(state: ApiServerState, group: str, version: str, rest: list[str]) -> Target | dict[str, Any]:
    """Resolve the path below a group-version to a resource target (or its discovery document)."""
    if not rest:
        doc = discovery.resource_list(state.registry, group, version)
        if doc is None:
            raise _not_found()
        return doc
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        rt = state.registry.lookup(group, version, rest[2])
        if rt is not None and rt.namespaced:
            namespace, rest = rest[1], rest[2:]
    rt = state.registry.lookup(group, version, rest[0])
    if rt is None or len(rest) > 3:
        raise _not_found()
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if rt.namespaced and namespace is None and name is not None:
        raise _not_found()
    return Target(rt, namespace, name, sub)


async def _body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise errors.StatusError(413, "RequestEntityTooLarge", "request entity too large")
    media = request.headers.get("content-type", "application/json").split(";", 1)[0].strip().lower()
    if not media.endswith("json"):
        raise errors.unsupported_media_type(media)
    try:
        return json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.bad_request(f"the body of the request could not be decoded as JSON: {exc}") from None


def _limit(value: str | None) -> int:
    try:
        limit = int(value or 0)
    except ValueError:
        raise errors.bad_request(f"limit must be an integer, not {value!r}") from None
    return max(limit, 0)


def _now(state: ApiServerState) -> dt.datetime:
    return state.store.clock()


async def _serve_resource(request: Request, state: ApiServerState, t: Target) -> Response:
    rt, store, method = t.rt, state.store, request.method
    if t.subresource is not None:
        raise _not_found()
    verb = {
        ("GET", False): "list",
        ("POST", False): "create",
        ("DELETE", False): "deletecollection",
        ("GET", True): "get",
        ("PUT", True): "update",
        ("PATCH", True): "patch",
        ("DELETE", True): "delete",
    }.get((method, t.name is not None))
    query = request.query_params
    if verb == "list" and query.get("watch") in ("1", "true"):
        verb = "watch"
    if verb is None or verb not in rt.verbs:
        raise errors.method_not_allowed(
            f"the server does not allow this method on the requested resource ({method} {rt.plural})"
        )
    table = tables.wants_table(request.headers.get("accept", ""))
    if verb == "list":
        items, meta = store.list(
            rt,
            t.namespace,
            label_selector=query.get("labelSelector", ""),
            field_selector=query.get("fieldSelector", ""),
            limit=_limit(query.get("limit")),
            continue_token=query.get("continue", ""),
        )
        if table:
            return _json(tables.table(rt, items, meta, _now(state)), media_type=tables.TABLE_MEDIA)
        kind = f"{rt.kind}List"
        return _json({"kind": kind, "apiVersion": rt.group_version, "metadata": meta, "items": items})
    if verb == "get":
        assert t.name is not None
        obj = store.get(rt, t.namespace, t.name)
        if table:
            return _json(tables.table(rt, [obj], {}, _now(state)), media_type=tables.TABLE_MEDIA)
        return _json(obj)
    if verb == "create":
        return _json(store.create(rt, t.namespace, await _body(request)), status=201)
    assert t.name is not None
    if verb == "update":
        return _json(store.replace(rt, t.namespace, t.name, await _body(request)))
    if verb == "patch":
        content_type = request.headers.get("content-type", "")
        return _json(store.patch(rt, t.namespace, t.name, content_type, await _body(request)))
    if verb == "delete":
        gone = store.delete(rt, t.namespace, t.name)
        return _json(errors.success(t.name, rt.plural, gone["metadata"].get("uid"), rt.group))
    raise errors.method_not_allowed(f"{verb} is not implemented by this stand-in")


async def _route(request: Request, state: ApiServerState) -> Response:
    parts = [p for p in request.url.path.split("/") if p]
    if request.url.path in ("/healthz", "/livez", "/readyz"):
        return PlainTextResponse("ok")
    if parts == ["version"]:
        return _json(discovery.version_info(state.git_version))
    if parts == ["api"]:
        return _json(discovery.api_versions(state.server_address))
    if parts == ["apis"]:
        return _json(discovery.group_list(state.registry))
    if len(parts) >= 2 and parts[:2] == ["api", "v1"]:
        found = _target(state, "", "v1", parts[2:])
    elif len(parts) == 2 and parts[0] == "apis":
        doc = discovery.group(state.registry, parts[1])
        if doc is None:
            raise _not_found()
        return _json(doc)
    elif len(parts) >= 3 and parts[0] == "apis":
        found = _target(state, parts[1], parts[2], parts[3:])
    else:
        raise _not_found()
    if isinstance(found, dict):
        return _json(found)
    return await _serve_resource(request, state, found)


def _authenticate(request: Request, state: ApiServerState) -> None:
    if request.url.path in PUBLIC_PATHS:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or token.strip() not in state.tokens:
        raise errors.unauthorized()


def build_app(state: ApiServerState) -> Starlette:
    async def handle(request: Request) -> Response:
        try:
            _authenticate(request, state)
            return await _route(request, state)
        except errors.StatusError as exc:
            return _json(exc.body(), status=exc.code)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    app = Starlette(routes=[Route("/{path:path}", handle, methods=methods)])
    app.state.apiserver = state
    return app
