"""The hub's ASGI application: every route, mounted in one place.

What ARM does for every request before a route sees it is done here too, once:
ARM paths match case-insensitively (`/subscriptions/X/resourcegroups/Y/providers/
microsoft.kubernetes/connectedclusters/Z` is the canonical path), a subscription id
that is not a GUID is a 400, and an unknown path or method is a 404 or 405 in the
API's error shape. The request body rules (size, JSON, media type) are
`hub.errors.read_json`'s.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from foundation.metrics import RequestMetrics, metrics_endpoint, request_histogram
from hub import (
    aadproxy,
    agentapi,
    clusters,
    configurations,
    discovery,
    extensions,
    fluxconfig,
    identity,
    relays,
    telemetry,
)
from hub.auth import Authenticator
from hub.context import Hub
from hub.errors import ApiError, api_error_handler, bad_request, error_response
from hub.heartbeats import HeartbeatWriter
from hub.issuer import graph, oauth
from hub.rbac import routes as rbac_routes
from hub.store.db import DATABASE_DOWN, database_down

log = logging.getLogger("kubearc.hub")

# Paths under an ARM scope: the root's `/providers/...`, `/subscriptions/...` and RBAC's `/{scope}/...`.
ARM_PREFIXES = ("/subscriptions/", "/providers/", "/{scope")
_SUBSCRIPTION = re.compile(r"^/subscriptions/([^/]*)", re.IGNORECASE)
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)


async def healthz(_: Request) -> Response:
    return Response("ok", media_type="text/plain")


async def unhandled(request: Request, exc: Exception) -> JSONResponse:
    incident = uuid.uuid4().hex[:12]
    log.error("unhandled error", exc_info=exc, extra={"incident": incident, "path": request.url.path})
    return JSONResponse(
        {"error": {"code": "InternalServerError", "message": f"internal error (incident {incident})"}},
        status_code=500,
    )


# The database cannot be reached (`hub.store.db.DATABASE_DOWN`): retryable, so a 503 with
# Retry-After, never a 500. The pool drops the broken connections and the next request opens
# fresh ones, so service resumes by itself once it is back.
RETRY_AFTER_SECONDS = 5


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    if not database_down(exc):  # a DBAPIError that is not about reaching the database
        return await unhandled(request, exc)
    log.warning(
        "database unavailable",
        extra={"path": request.url.path, "error": f"{type(exc).__name__}: {exc}"[:300]},
    )
    error = ApiError(503, "ServiceUnavailable", "the hub's database is unavailable; retry shortly")
    return error_response(error, {"Retry-After": str(RETRY_AFTER_SECONDS)})


async def no_route(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's 404 (no such path) and 405 (no such method on it), in the API's error shape."""
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        error = ApiError(404, "NotFound", f"{where}: no such path in the hub's API")
    elif exc.status_code == 405:
        error = ApiError(405, "MethodNotAllowed", f"{where}: the path does not take {request.method}")
    else:
        error = ApiError(exc.status_code, "BadRequest", f"{where}: {exc.detail}")
    return error_response(error, exc.headers)


class SubscriptionIds:
    """ARM's first check of a path: its subscription id is a GUID (a 400 before any route or token)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = _SUBSCRIPTION.match(scope["path"]) if scope["type"] == "http" else None
        if found and not _GUID.match(found[1]):
            error = bad_request(
                f"the subscription id {found[1]!r} is malformed: a subscription id is a GUID",
                "InvalidSubscriptionId",
            )
            await error_response(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def arm_paths_ignore_case(routes: Iterable[BaseRoute]) -> None:
    """ARM compares the segments of a path case-insensitively; so do these routes."""
    for route in routes:
        if isinstance(route, Route) and route.path.startswith(ARM_PREFIXES):
            route.path_regex = re.compile(route.path_regex.pattern, re.IGNORECASE)


def build_app(hub: Hub, extra_routes: list[BaseRoute] | None = None) -> Starlette:
    """The hub API; `extra_routes` lets the command line mount other parts (the relay)."""
    registry = CollectorRegistry()
    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", healthz),
        Route("/metrics", metrics_endpoint(registry)),
        *discovery.routes,
        *oauth.routes,
        *graph.routes,
        *rbac_routes.routes,
        *identity.routes,
        *aadproxy.routes,
        *agentapi.routes,
        *relays.routes,
        *configurations.routes,
        *fluxconfig.routes,
        *extensions.routes,
        *telemetry.routes,
        *clusters.routes,
    ]
    arm_paths_ignore_case(routes)
    app = Starlette(
        routes=[*routes, *(extra_routes or [])],
        middleware=[
            Middleware(RequestMetrics, histogram=request_histogram("kubearc_hub", registry)),
            Middleware(SubscriptionIds),
        ],
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: no_route,
            **dict.fromkeys((*DATABASE_DOWN, DBAPIError), database_unavailable),
            Exception: unhandled,
        },
    )
    app.state.hub = hub
    app.state.authenticator = Authenticator(hub)
    app.state.registry = registry
    app.state.heartbeats = HeartbeatWriter(hub, registry)  # run beside the server (hub.server)
    return app
