"""The hub's ASGI application: every route, mounted in one place."""

from __future__ import annotations

import logging
import uuid

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from foundation.metrics import RequestMetrics, metrics_endpoint, request_histogram
from hub import aadproxy, agentapi, clusters, configurations, discovery, identity
from hub.auth import Authenticator
from hub.context import Hub
from hub.errors import ApiError, api_error_handler
from hub.issuer import graph, oauth
from hub.rbac import routes as rbac_routes

log = logging.getLogger("kubearc.hub")


async def healthz(_: Request) -> Response:
    return Response("ok", media_type="text/plain")


async def unhandled(request: Request, exc: Exception) -> JSONResponse:
    incident = uuid.uuid4().hex[:12]
    log.error("unhandled error", exc_info=exc, extra={"incident": incident, "path": request.url.path})
    return JSONResponse(
        {"error": {"code": "InternalServerError", "message": f"internal error (incident {incident})"}},
        status_code=500,
    )


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
        *configurations.routes,
        *clusters.routes,
        *(extra_routes or []),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestMetrics, histogram=request_histogram("kubearc_hub", registry))],
        exception_handlers={ApiError: api_error_handler, Exception: unhandled},
    )
    app.state.hub = hub
    app.state.authenticator = Authenticator(hub)
    app.state.registry = registry
    return app
