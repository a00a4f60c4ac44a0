"""guard's endpoints: TokenReviews and SubjectAccessReviews, probes, and the state they share.

Every review gets one deadline; past it (or on any internal fault) the answer is
still HTTP 200: `authenticated: false` for TokenReviews, the authorizer's failure
policy for SubjectAccessReviews. A 5xx would make the apiserver retry with
backoff and multiply the load of a struggling webhook. Malformed bodies get a
400 naming the problem. The endpoints call only what `guard/interfaces.py`
declares: the fast path first (`cached`, `decide_now`: no await, no timer), then
the full check under the deadline. Each decision is one audit line with a
request id and never the token (`guard/audit.py`). `guard/server.py` serves
these apps over mutual TLS.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from foundation.metrics import RequestMetrics, probe_routes, probes_app, request_histogram
from guard.audit import AuditSink, LoggingAudit
from guard.config import GuardConfig
from guard.errors import AuthenticationError, ReviewError
from guard.interfaces import Authenticator, Authorizer
from guard.reviews import (
    SubjectAccessReview,
    TokenReview,
    subject_access_review_response,
    token_review_response,
)

log = logging.getLogger("kubearc.guard")


@dataclass
class GuardState:
    config: GuardConfig
    authenticator: Authenticator
    authorizer: Authorizer
    audit: AuditSink = field(default_factory=LoggingAudit)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    ready: bool = False
    waiting_for: str = "signing keys and configuration not loaded yet"  # /readyz says why it is 503

    def __post_init__(self) -> None:
        self.reviews = Counter(
            "guard_reviews",
            "Reviews answered by kind and result.",
            ["kind", "result"],
            registry=self.registry,
        )
        self._counted: dict[tuple[str, str], Any] = {}

    def count(self, kind: str, result: str) -> None:
        """`reviews.labels(kind, result).inc()`, the labelled child looked up once."""
        child = self._counted.get((kind, result))
        if child is None:
            child = self._counted[(kind, result)] = self.reviews.labels(kind, result)
        child.inc()


async def _read_json(request: Request, limit: int) -> Any:
    # ASGI messages read directly: Starlette's `stream()` async generator cost more than the
    # JSON parsing of a typical review, and a one-message body is used without a copy. Later
    # chunks go into a bytearray (linear, whatever the chunk sizes a client chooses).
    body: bytes | bytearray = b""
    more = True
    while more:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if not body:
            body = chunk
        else:
            if isinstance(body, bytes):
                body = bytearray(body)
            body += chunk
        if len(body) > limit:
            raise ReviewError(f"request body exceeds {limit} bytes")
        more = message.get("more_body", False)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:  # also invalid UTF-8
        raise ReviewError(f"request body is not JSON: {exc}") from None


class ReviewResponse(JSONResponse):
    """JSONResponse encoded by orjson: compact UTF-8, as `JSONResponse` writes it, at a tenth of the cost."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _bad_request(message: str) -> Response:
    return JSONResponse({"error": message}, status_code=400)


# Request ids without an Audit-ID header: a random per-process prefix and a counter, unique without
# a uuid4 (a getrandom call and UUID object) per review.
_ID_PREFIX = uuid.uuid4().hex[:16]
_ids = itertools.count(1)


def _request_id(request: Request) -> str:
    # A caller may send an Audit-ID (a real kube-apiserver v1.36 does not: tests/captures/); when one
    # comes, keep it so a decision can be matched to that caller's audit log.
    for name, value in request.scope["headers"]:  # ASGI lower-cases names; no Headers object built
        if name == b"audit-id" and value:
            return value.decode("latin-1")
    return f"{_ID_PREFIX}{next(_ids):08x}"


async def token_reviews(request: Request) -> Response:
    state: GuardState = request.app.state.guard
    start = time.perf_counter()
    try:
        review = TokenReview.parse(await _read_json(request, state.config.max_body))
    except ReviewError as exc:
        state.count("tokenreview", "malformed")
        return _bad_request(str(exc))
    user = None
    error = ""
    audiences: list[str] = []
    cached = False
    authenticator = state.authenticator
    try:
        result = authenticator.cached(review.token)  # a token verified before: nothing to time out
        if result is None:
            async with asyncio.timeout(state.config.deadline):
                result = await authenticator.review(review.token, review.audiences)
        user, cached = result.user, result.cached
        audiences = [a for a in review.audiences if a in result.audiences]
    except AuthenticationError as exc:
        error = exc.reason
    except TimeoutError:
        error = f"authentication did not finish within {state.config.deadline:g}s"
    except Exception:  # last resort: a bug in a provider is logged, and the token not accepted
        log.exception("token review failed")
        error = "internal error while authenticating"
    state.count("tokenreview", "authenticated" if user else "refused")
    state.audit.decision(
        "tokenreview",
        {
            "request_id": _request_id(request),
            "authenticated": user is not None,
            "user": user.username if user else None,
            "uid": user.uid if user else None,
            "groups": len(user.groups) if user else None,
            "cached": cached,
            "reason": error or None,
            "ms": round((time.perf_counter() - start) * 1000, 3),
        },
    )
    return ReviewResponse(token_review_response(review, user, error, audiences))


async def subject_access_reviews(request: Request) -> Response:
    state: GuardState = request.app.state.guard
    start = time.perf_counter()
    try:
        review = SubjectAccessReview.parse(await _read_json(request, state.config.max_body))
    except ReviewError as exc:
        state.count("subjectaccessreview", "malformed")
        return _bad_request(str(exc))
    budget = state.config.deadline
    deadline = time.monotonic() + budget
    authorizer = state.authorizer
    try:
        decision = authorizer.decide_now(review)  # no I/O needed: answered without a timer
        if decision is None:
            async with asyncio.timeout(budget):
                decision = await authorizer.authorize(review, deadline)
    except TimeoutError:
        reason = f"authorization did not finish within {budget:g}s"
        decision = authorizer.unavailable(reason, reason)
    except Exception:  # last resort: a bug in a provider is logged and answered by its failure policy
        log.exception("subject access review failed")
        decision = authorizer.unavailable(
            "internal error while authorizing", "internal error while authorizing"
        )
    result = "allowed" if decision.allowed else "denied" if decision.denied else "noopinion"
    state.count("subjectaccessreview", result)
    attrs = review.resource or review.non_resource
    state.audit.decision(
        "subjectaccessreview",
        {
            "request_id": _request_id(request),
            "user": review.user,
            "uid": review.uid,
            "verb": attrs.verb if attrs else None,
            "resource": getattr(attrs, "resource", None),
            "namespace": getattr(attrs, "namespace", None),
            "path": getattr(attrs, "path", None),
            "decision": result,
            "reason": decision.reason or None,
            "ms": round((time.perf_counter() - start) * 1000, 3),
        },
    )
    return ReviewResponse(subject_access_review_response(review, decision))


def build_apps(state: GuardState) -> tuple[Any, Any]:
    """(the mTLS review app, the plain health and metrics app)."""
    histogram = request_histogram("guard", state.registry)

    def missing() -> str | None:
        return None if state.ready else state.waiting_for

    probes = probe_routes(missing)
    reviews = Starlette(
        routes=[
            Route("/tokenreviews", token_reviews, methods=["POST"]),
            Route("/subjectaccessreviews", subject_access_reviews, methods=["POST"]),
            *probes,
        ]
    )
    health = probes_app(state.registry, missing)
    reviews.state.guard = state
    return RequestMetrics(reviews, histogram), health
