"""Locust: kubectl-like API traffic (list, get, watch) through `kubearc proxy`.

Start the stack (hub + relay, sandbox apiserver, agents, client proxy) and keep it up:

    .venv/bin/kubearc demo            # prints `export KUBECONFIG=...`; leave it running

then, in another shell, with that KUBECONFIG:

    KUBECONFIG=/tmp/kubearc-demo-XXXX/kubeconfig \\
      .venv/bin/locust -f loadtest/locustfile_tunnel.py --headless -u 20 -r 5 -t 60s

Each simulated user holds one TLS connection through the tunnel (as kubectl
does) and verifies the apiserver exactly as kubectl would: the kubeconfig's CA
and `tls-server-name`. Requests are reported to locust by name.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit

import yaml
from locust import User, between, events, task


def _load_kubeconfig() -> dict[str, Any]:
    path = os.environ.get("KUBECONFIG")
    if not path:
        raise RuntimeError("set KUBECONFIG to the file `kubearc demo` or `kubearc proxy -f` wrote")
    doc = yaml.safe_load(open(path))  # noqa: SIM115 - read once at start
    current = doc["current-context"]
    context = next(c["context"] for c in doc["contexts"] if c["name"] == current)
    cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in doc["users"] if u["name"] == context["user"])
    return {"cluster": cluster, "user": user}


class KubeConnection:
    """One persistent HTTPS connection verified like kubectl verifies it (CA + tls-server-name)."""

    def __init__(self, kubeconfig: dict[str, Any]) -> None:
        cluster, user = kubeconfig["cluster"], kubeconfig["user"]
        url = urlsplit(cluster["server"])
        self.address = (url.hostname or "127.0.0.1", url.port or 443)
        self.server_name = cluster.get("tls-server-name") or url.hostname
        with tempfile.NamedTemporaryFile("wb", suffix=".crt", delete=False) as ca:
            ca.write(base64.b64decode(cluster["certificate-authority-data"]))
        self.context = ssl.create_default_context(cafile=ca.name)
        os.unlink(ca.name)
        self.headers = {"Accept": "application/json"}
        if user.get("token"):
            self.headers["Authorization"] = f"Bearer {user['token']}"
        self.conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        sock = socket.create_connection(self.address, timeout=30)
        conn = http.client.HTTPConnection(self.address[0], self.address[1], timeout=30)
        conn.sock = self.context.wrap_socket(sock, server_hostname=self.server_name)
        return conn

    def get(self, path: str) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = self._connect()
        try:
            self.conn.request("GET", path, headers=self.headers)
            response = self.conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise


class KubectlUser(User):
    """Lists, gets and short watches, weighted like an interactive kubectl session."""

    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        self.kube = KubeConnection(_load_kubeconfig())

    def _timed(self, name: str, path: str) -> bytes | None:
        start = time.perf_counter()
        error: Exception | None = None
        body = b""
        try:
            status, body = self.kube.get(path)
            if status >= 400:
                error = RuntimeError(f"HTTP {status}: {body[:200]!r}")
        except Exception as exc:  # reported to locust, never raised into gevent
            error = exc
        events.request.fire(
            request_type="GET",
            name=name,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=len(body),
            exception=error,
            context={},
        )
        return None if error else body

    @task(5)
    def list_pods(self) -> None:
        self._timed("list pods", "/api/v1/namespaces/default/pods?limit=500")

    @task(3)
    def get_pod(self) -> None:
        body = self._timed("list pods (for get)", "/api/v1/namespaces/default/pods?limit=1")
        items = json.loads(body)["items"] if body else []
        if items:
            self._timed("get pod", f"/api/v1/namespaces/default/pods/{items[0]['metadata']['name']}")

    @task(2)
    def discovery(self) -> None:
        self._timed("discovery /api", "/api")
        self._timed("discovery /apis", "/apis")

    @task(1)
    def watch(self) -> None:
        # A bounded watch: the server ends it after timeoutSeconds, like kubectl's informers re-list.
        self._timed("watch pods (2 s)", "/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=2")
