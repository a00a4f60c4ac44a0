"""Prometheus helpers shared by every kubearc server.

Buckets start at 50 microseconds: a webhook or a heartbeat that answers in
0.2 ms must be told apart from one that answers in 2 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import uvicorn
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from foundation.webserver import EmbeddedUvicorn

LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def metrics_endpoint(registry: CollectorRegistry = REGISTRY) -> Callable[[Request], Awaitable[Response]]:
    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics


class RequestMetrics:
    """ASGI middleware: one latency histogram by route template, method and status."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.histogram.labels(scope["method"], path, str(status)).observe(time.perf_counter() - start)


def request_histogram(prefix: str, registry: CollectorRegistry = REGISTRY) -> Histogram:
    return Histogram(
        f"{prefix}_http_request_duration_seconds",
        "HTTP request latency by method, route and status.",
        ["method", "route", "status"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )


Readiness = Callable[[], str | None]  # None when ready, else what is missing (the 503's body)


def probe_routes(ready: Readiness) -> list[Route]:
    """`/healthz` (the process answers) and `/readyz` (503 with what is missing until ready)."""

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(_: Request) -> Response:
        missing = ready()
        return PlainTextResponse(missing or "ok", status_code=503 if missing else 200)

    return [Route("/healthz", healthz), Route("/readyz", readyz)]


def probes_app(registry: CollectorRegistry, ready: Readiness) -> Starlette:
    """The plain-HTTP app for kubelet and Prometheus: the probes and `/metrics`."""
    return Starlette(routes=[*probe_routes(ready), Route("/metrics", metrics_endpoint(registry))])


async def serve_probes(host: str, port: int, registry: CollectorRegistry, ready: Readiness) -> None:
    """`probes_app` in plain HTTP on host:port until cancelled."""
    app = probes_app(registry, ready)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="off")
    server = EmbeddedUvicorn(config)
    try:
        await server.serve()
    except asyncio.CancelledError:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.shutdown(), 2)
        raise
