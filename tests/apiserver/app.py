"""The stand-in's HTTP surface: authentication, URL → resource routing, verbs, content types.

Paths follow the apiserver's layout:
`/api/v1[/namespaces/{ns}]/{resource}[/{name}[/{subresource}]]` for the core group and
`/apis/{group}/{version}[/namespaces/{ns}]/{resource}[/{name}[/{subresource}]]` for the others.
Every failure is a `Status` object with the apiserver's reason and code.
Bodies may be JSON, YAML (apply patches) or Kubernetes protobuf (`protobuf.py`);
responses are JSON, which every client that sends protobuf also accepts.
Websocket upgrades (exec, attach, port-forward) go to `upgrades.py`; SPDY upgrades and
HTTP/2 are told apart before this app (`front.py`). Every request is noted in
`ApiServerState.seen` with its HTTP version, so tests can tell which protocol kubectl used.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from tests.apiserver import (
    discovery,
    errors,
    fields,
    logs,
    managed,
    openapi,
    openapi_v2,
    patch,
    protobuf,
    tables,
    upgrades,
    watch,
)
from tests.apiserver.audit import RequestLog, audited
from tests.apiserver.resources import Registry, ResourceType
from tests.apiserver.store import ObjectStore
from tests.apiserver.webhooks import Webhooks, webhook_authorized
from tests.apiserver.workloads import scale_of

if TYPE_CHECKING:
    from tests.apiserver.kubelet import Kubelet

PUBLIC_PATHS = {"/version", "/healthz", "/livez", "/readyz"}  # system:public-info-viewer
MAX_BODY = 3 * 1024 * 1024  # the apiserver's request size limit


class Seen(NamedTuple):
    """One request as it arrived (the stand-in keeps the latest few thousand)."""

    http_version: str  # "1.1" or "2"
    method: str
    path: str
    upgrade: str = ""  # "websocket" or "SPDY/3.1"


@dataclass
class ApiServerState:
    registry: Registry
    store: ObjectStore
    git_version: str
    server_address: str = "127.0.0.1:6443"
    tokens: dict[str, str] = field(default_factory=dict)  # bearer token → user name
    kubelet: Kubelet | None = None
    seen: deque[Seen] = field(default_factory=lambda: deque(maxlen=5000))
    audit: RequestLog = field(default_factory=RequestLog)  # headers and impersonation (audit.py)
    webhooks: Webhooks | None = None  # guard as authentication and authorization webhook (webhooks.py)

    def user_of(self, token: str) -> str | None:
        """Whom a bearer token stands for: the stand-in's own tokens, then the webhook's (cached) users."""
        if token in self.tokens:
            return self.tokens[token]
        user = self.webhooks.cached_user(token) if self.webhooks and token else None
        return user.username if user else None

    def authenticate(self, path: str, authorization: str) -> str | None:
        """The user a bearer token stands for; raises 401 unless the path is public."""
        scheme, _, token = authorization.partition(" ")
        user = self.user_of(token.strip()) if scheme.lower() == "bearer" else None
        if user is None and path not in PUBLIC_PATHS:
            raise errors.unauthorized()
        return user


@dataclass(frozen=True)
class Target:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def _json(doc: Any, status: int = 200, media_type: str = "application/json") -> Response:
    return JSONResponse(doc, status_code=status, media_type=media_type)


def _not_found() -> errors.StatusError:
    message = "the server could not find the requested resource"
    return errors.StatusError(404, "NotFound", message, empty_details=True)


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
    if media == protobuf.MEDIA:
        return protobuf.decode_body(raw)
    if media in (patch.APPLY, "application/yaml"):
        try:
            return yaml.safe_load(raw.decode() or "null")
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise errors.bad_request(f"the body of the request could not be decoded as YAML: {exc}") from None
    if not media.endswith("json"):
        raise errors.unsupported_media_type(media)
    try:
        return json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.bad_request(f"the body of the request could not be decoded as JSON: {exc}") from None


def _check_accept(request: Request) -> None:
    """Answer in JSON; refuse only a client that accepts nothing but protobuf."""
    accept = request.headers.get("accept", "")
    media = [m.split(";", 1)[0].strip().lower() for m in accept.split(",") if m.strip()]
    if media and all(
        m in (protobuf.MEDIA, "application/vnd.kubernetes.protobuf;stream=watch") for m in media
    ):
        raise errors.StatusError(
            406,
            "NotAcceptable",
            f"only the following media types are accepted: application/json, application/yaml; not {accept}",
        )


def _validated(request: Request, rt: ResourceType, obj: Any, warnings: list[str]) -> Any:
    """Server-side field validation: drop unknown fields; Strict refuses them, Warn reports them."""
    directive = request.query_params.get("fieldValidation", "Warn")
    if directive not in ("Ignore", "Warn", "Strict"):
        raise errors.bad_request(f"fieldValidation must be one of Ignore, Warn, Strict, not {directive!r}")
    unknown = [] if rt.custom else fields.unknown_fields(rt.kind, obj)  # custom objects keep every field
    if unknown and directive == "Strict":
        listed = ", ".join(f'unknown field "{u}"' for u in unknown)
        raise errors.bad_request(
            f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
            f"strict decoding error: {listed}"
        )
    if directive == "Warn":
        warnings += [f'unknown field "{u}"' for u in unknown]
    fields.prune(obj, unknown)
    return obj


def _write_options(request: Request, verb: str, is_apply: bool) -> tuple[str, bool]:
    """A write's field manager and `force`, checked as the apiserver checks Create/Update/PatchOptions."""
    query = request.query_params
    manager = query.get("fieldManager", "")
    force = query.get("force")
    problems: list[tuple[str, str]] = []
    if is_apply and not manager:
        problems.append(("fieldManager", "Required value: is required for apply patch"))
    if force is not None and not is_apply:
        problems.append(("force", "Forbidden: may not be specified for non-apply patch"))
    if len(manager) > 128:
        problems.append(("fieldManager", "Too long: may not be more than 128 bytes"))
    if any(not c.isprintable() for c in manager):
        problems.append(
            ("fieldManager", f'Invalid value: "{manager}": must only contain printable characters')
        )
    if problems:
        options = {"create": "CreateOptions", "update": "UpdateOptions"}.get(verb, "PatchOptions")
        raise errors.invalid(options, "", problems, group="meta.k8s.io")
    return managed.manager_for(manager, request.headers.get("user-agent", "")), force in ("true", "1")


def _limit(value: str | None) -> int:
    try:
        limit = int(value or 0)
    except ValueError:
        raise errors.bad_request(f"limit must be an integer, not {value!r}") from None
    return max(limit, 0)


def _now(state: ApiServerState) -> dt.datetime:
    return state.store.clock()


def _json_with(doc: Any, warnings: list[str], status: int = 200) -> Response:
    response = _json(doc, status)
    for text in warnings:
        response.headers.append("Warning", "299 - " + json.dumps(text))
    return response


def _check_patch_type(rt: ResourceType, content_type: str) -> None:
    """Custom resources take JSON, merge and apply patches; strategic merge is a 415, as kubectl expects."""
    if rt.custom and content_type.split(";", 1)[0].strip().lower() == patch.STRATEGIC:
        raise errors.unsupported_patch(patch.CUSTOM_PATCH_TYPES)


async def _serve_subresource(request: Request, state: ApiServerState, t: Target) -> Response:
    rt, store, method, sub = t.rt, state.store, request.method, t.subresource
    assert t.name is not None and sub is not None
    if sub not in rt.subresources:
        raise _not_found()
    dry_run = request.query_params.get("dryRun") == "All"
    if sub == "log" and method == "GET":
        assert state.kubelet is not None
        return await logs.serve_log(request, state.kubelet, t.namespace or "", t.name)
    if sub in upgrades.STREAMING:
        store.get(rt, t.namespace, t.name)
        raise errors.bad_request(upgrades.UPGRADE_REQUIRED)
    manager = managed.manager_for(
        request.query_params.get("fieldManager"), request.headers.get("user-agent", "")
    )
    if sub == "status":
        if method == "GET":
            return _json(store.get(rt, t.namespace, t.name))
        if method == "PUT":
            body = await _body(request)
            return _json(
                store.replace(
                    rt, t.namespace, t.name, body, subresource="status", dry_run=dry_run, manager=manager
                )
            )
        if method == "PATCH":
            content_type = request.headers.get("content-type", "")
            _check_patch_type(rt, content_type)
            body = await _body(request)
            return _json(
                store.patch(
                    rt,
                    t.namespace,
                    t.name,
                    content_type,
                    body,
                    subresource="status",
                    dry_run=dry_run,
                    manager=manager,
                )
            )
    if sub == "scale":
        current = store.get(rt, t.namespace, t.name)
        if method == "GET":
            return _json(scale_of(current))
        if method in ("PUT", "PATCH"):
            body = await _body(request)
            if method == "PATCH":
                body = patch.apply(request.headers.get("content-type", ""), scale_of(current), body)
            replicas = (body.get("spec") or {}).get("replicas") if isinstance(body, dict) else None
            if not isinstance(replicas, int) or replicas < 0:
                raise errors.invalid(
                    "Scale", t.name, [("spec.replicas", "Invalid value: must be >= 0")], "autoscaling"
                )
            wanted_rv = (body.get("metadata") or {}).get("resourceVersion") if method == "PUT" else None
            merge = {"spec": {"replicas": replicas}, "metadata": {"resourceVersion": wanted_rv}}
            updated = store.patch(
                rt,
                t.namespace,
                t.name,
                patch.MERGE,
                merge,
                subresource="scale",
                dry_run=dry_run,
                manager=manager,
            )
            return _json(scale_of(updated))
    raise errors.method_not_allowed(f"{method} is not allowed on {rt.plural}/{sub}")


async def _serve_resource(request: Request, state: ApiServerState, t: Target) -> Response:
    rt, store, method = t.rt, state.store, request.method
    if t.subresource is not None:
        return await _serve_subresource(request, state, t)
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
    if verb in ("list", "get") and query.get("watch") in ("1", "true"):
        verb = "watch"
    if verb is None or (verb not in rt.verbs and verb != "watch"):
        raise errors.method_not_allowed(
            f"the server does not allow this method on the requested resource ({method} {rt.plural})"
        )
    _check_accept(request)
    dry_run = query.get("dryRun") == "All"
    warnings: list[str] = []
    table = tables.wants_table(request.headers.get("accept", ""))
    include = query.get("includeObject", "Metadata")
    if verb == "watch":
        return await watch.serve_watch(request, store, rt, t.namespace, t.name)
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
            return _json(tables.table(rt, items, meta, _now(state), include), media_type=tables.TABLE_MEDIA)
        kind = f"{rt.kind}List"
        return _json({"kind": kind, "apiVersion": rt.group_version, "metadata": meta, "items": items})
    if verb == "get":
        assert t.name is not None
        obj = store.get(rt, t.namespace, t.name)
        if table:
            return _json(tables.table(rt, [obj], {}, _now(state), include), media_type=tables.TABLE_MEDIA)
        return _json(obj)
    if verb == "create":
        manager, _ = _write_options(request, verb, False)
        body = _validated(request, rt, await _body(request), warnings)
        created = store.create(rt, t.namespace, body, dry_run=dry_run, manager=manager)
        return _json_with(created, warnings, status=201)
    assert t.name is not None
    if verb == "update":
        manager, _ = _write_options(request, verb, False)
        body = _validated(request, rt, await _body(request), warnings)
        replaced = store.replace(rt, t.namespace, t.name, body, dry_run=dry_run, manager=manager)
        return _json_with(replaced, warnings)
    if verb == "patch":
        content_type = request.headers.get("content-type", "")
        is_apply = content_type.split(";", 1)[0].strip() == patch.APPLY
        _check_patch_type(rt, content_type)
        manager, force = _write_options(request, verb, is_apply)
        body = await _body(request)
        if isinstance(body, dict):
            _validated(request, rt, body, warnings)
        if is_apply:
            applied, was_created = store.apply(
                rt, t.namespace, t.name, body, manager=manager, force=force, dry_run=dry_run
            )
            return _json_with(applied, warnings, status=201 if was_created else 200)
        patched = store.patch(rt, t.namespace, t.name, content_type, body, dry_run=dry_run, manager=manager)
        return _json_with(patched, warnings)
    if verb == "delete":
        options = await _body(request) if int(request.headers.get("content-length") or 0) else None
        options = options if isinstance(options, dict) else {}
        dry_run = dry_run or options.get("dryRun") == ["All"]
        gone = store.delete(
            rt, t.namespace, t.name, preconditions=options.get("preconditions"), dry_run=dry_run
        )
        return _json(errors.success(t.name, rt.plural, gone["metadata"].get("uid"), rt.group))
    raise errors.method_not_allowed(f"{verb} is not implemented by this stand-in")


async def _route(request: Request, state: ApiServerState) -> Response:
    parts = [p for p in request.url.path.split("/") if p]
    if request.url.path in ("/healthz", "/livez", "/readyz"):
        return PlainTextResponse("ok")
    if parts == ["version"]:
        return _json(discovery.version_info(state.git_version))
    if parts in (["api"], ["apis"]) and discovery.wants_aggregated(request.headers.get("accept", "")):
        listing = discovery.aggregated(state.registry, core=parts == ["api"])
        return _json(listing, media_type=discovery.AGGREGATED_MEDIA)
    if parts == ["api"]:
        return _json(discovery.api_versions(state.server_address))
    if parts == ["apis"]:
        return _json(discovery.group_list(state.registry))
    if parts == ["openapi", "v2"]:
        swagger = openapi_v2.document(state.registry)
        if openapi_v2.MEDIA_PROTOBUF in request.headers.get("accept", ""):
            return Response(openapi_v2.encode(swagger), media_type=openapi_v2.RETURNED_PROTOBUF)
        return _json(swagger)
    if parts == ["openapi", "v3"]:
        return _json(openapi.index(state.registry))
    if parts[:2] == ["openapi", "v3"] and len(parts) in (4, 5):
        gv = (parts[3], parts[4]) if parts[2] == "apis" and len(parts) == 5 else ("", parts[3])
        doc = openapi.gv_document(state.registry, *gv) if parts[2] in ("api", "apis") else None
        if doc is None:
            raise _not_found()
        return _json(doc)
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


def build_app(state: ApiServerState) -> Any:
    async def handle(request: Request) -> Response:
        try:
            state.authenticate(request.url.path, request.headers.get("authorization", ""))
            return await _route(request, state)
        except errors.StatusError as exc:
            return _json(exc.body(), status=exc.code)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    http = Starlette(routes=[Route("/{path:path}", handle, methods=methods)])
    http.state.apiserver = state

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            upgrade = "websocket" if scope["type"] == "websocket" else ""
            method = scope.get("method", "GET")
            state.seen.append(Seen(scope.get("http_version", "1.1"), method, scope["path"], upgrade))
        if scope["type"] == "websocket":
            await upgrades.handle(WebSocket(scope, receive, send), state)
        else:
            await http(scope, receive, send)

    return webhook_authorized(audited(app, state), state)
