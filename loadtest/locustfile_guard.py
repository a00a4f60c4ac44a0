"""Locust: an apiserver's webhook traffic (TokenReview, SubjectAccessReview) against a running guard.

Start the stack (hub, an onboarded cluster, `kubearc guard serve` with Azure RBAC against the
hub, mutual TLS) and keep it up; it prints the variables to export:

    .venv/bin/python -m loadtest.bench_guard --serve      # leave it running

then, in another shell, after pasting those `export` lines:

    .venv/bin/locust -f loadtest/locustfile_guard.py --headless -u 20 -r 10 -t 60s

| variable | meaning |
| --- | --- |
| `GUARD_URL` | guard's review listener, e.g. `https://127.0.0.1:PORT` |
| `GUARD_CA` | CA of guard's serving certificate |
| `GUARD_CERT`, `GUARD_KEY` | the apiserver's client certificate and key (mutual TLS) |
| `GUARD_TOKENS` | file with one user token per line; the first is every user's warm token |

Each simulated apiserver connection is one keep-alive HTTPS connection with the
client certificate, as kube-apiserver's webhook client holds. The SAR user, groups
and `extra.oid` are the ones guard's TokenReview answered, as the apiserver passes
them on. An answer that is not HTTP 200 with the expected status counts as a failure.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from locust import User, between, events, task


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(
            f"set {name} (run `python -m loadtest.bench_guard --serve` and export what it prints)"
        )
    return value


class GuardConnection:
    """One persistent mTLS connection to guard; reconnects after an error."""

    def __init__(self) -> None:
        url = urlsplit(_env("GUARD_URL"))
        self.address = (url.hostname or "127.0.0.1", url.port or 443)
        self.context = ssl.create_default_context(cafile=_env("GUARD_CA"))
        self.context.load_cert_chain(_env("GUARD_CERT"), _env("GUARD_KEY"))
        self.conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        sock = socket.create_connection(self.address, timeout=30)
        # http.client sends headers and body in two writes: without NODELAY, Nagle holds the body
        # until the server's delayed ACK (40 ms). Go's client (the apiserver's) sets NODELAY too.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = http.client.HTTPConnection(self.address[0], self.address[1], timeout=30)
        conn.sock = self.context.wrap_socket(sock, server_hostname=self.address[0])
        return conn

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = self._connect()
        try:
            self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            response = self.conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise


def token_review(token: str) -> dict[str, Any]:
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": ["https://kubernetes.default.svc"]},
    }


def access_review(user: dict[str, Any], resource: str, namespace: str, verb: str = "get") -> dict[str, Any]:
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "namespace": namespace,
                "verb": verb,
                "version": "v1",
                "resource": resource,
            },
            "user": user["username"],
            "uid": user.get("uid", ""),
            "groups": [*user.get("groups", []), "system:authenticated"],
            "extra": user.get("extra", {}),
        },
    }


class ApiserverUser(User):
    """Reviews weighted like an apiserver's: mostly TokenReviews and reads, some writes."""

    wait_time = between(0.001, 0.01)

    def on_start(self) -> None:
        self.guard = GuardConnection()
        with open(_env("GUARD_TOKENS")) as f:
            self.tokens = [line.strip() for line in f if line.strip()]
        answer = self._review(
            "TokenReview (first)", "/tokenreviews", token_review(self.tokens[0]), "authenticated"
        )
        self.user = answer["status"]["user"] if answer else {"username": "unknown"}

    def _review(self, name: str, path: str, body: dict[str, Any], expect: str) -> dict[str, Any] | None:
        """POST one review, report it to locust, return the answer when it had `status.<expect>`."""
        start = time.perf_counter()
        error: Exception | None = None
        raw = b""
        doc: dict[str, Any] | None = None
        try:
            status, raw = self.guard.post(path, body)
            if status != 200:
                error = RuntimeError(f"HTTP {status}: {raw[:200]!r}")
            else:
                doc = json.loads(raw)
                if expect not in doc.get("status", {}):
                    error = RuntimeError(f"no status.{expect}: {raw[:200]!r}")
        except Exception as exc:  # reported to locust, never raised into gevent
            error = exc
        events.request.fire(
            request_type="POST",
            name=name,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=len(raw),
            exception=error,
            context={},
        )
        return None if error else doc

    @task(4)
    def token_review_warm(self) -> None:
        answer = self._review(
            "TokenReview (warm)", "/tokenreviews", token_review(self.tokens[0]), "authenticated"
        )
        if answer is not None and answer["status"]["authenticated"] is not True:
            events.request.fire(
                request_type="CHECK", name="TokenReview (warm) authenticated", response_time=0,
                response_length=0, exception=RuntimeError(answer["status"].get("error")), context={},
            )  # fmt: skip

    @task(1)
    def token_review_other_user(self) -> None:
        self._review(
            "TokenReview (other users)",
            "/tokenreviews",
            token_review(random.choice(self.tokens)),
            "authenticated",
        )

    @task(4)
    def get_pods(self) -> None:
        # The benchmark's users hold Viewer on the cluster through their group: Allowed.
        self._review(
            "SAR get pods -n dev", "/subjectaccessreviews", access_review(self.user, "pods", "dev"), "allowed"
        )

    @task(1)
    def list_secrets(self) -> None:
        # Viewer has no secrets: NoOpinion (allowed false, not denied).
        self._review(
            "SAR list secrets -n dev",
            "/subjectaccessreviews",
            access_review(self.user, "secrets", "dev", "list"),
            "allowed",
        )
