"""`kubearc guard serve` as its own process, answering an apiserver's reviews from the hub's Azure RBAC.

A real hub (thread, real HTTPS), a connected cluster whose identity sits in a
`file:DIR` identity store, and guard started the way an operator starts it, with
mutual TLS. Users sign in with msal's password grant against the hub's issuer;
roles are assigned through the hub's Microsoft.Authorization API; reviews are
the JSON kube-apiserver posts. Then the hub stops, and guard must still answer
within its deadline, with its failure policy and a reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import msal
import pytest
from typer.testing import CliRunner

from foundation.agenttoken import AgentTokens as IdentityCredential
from foundation.agenttoken import IdentityUnavailable as CredentialError
from foundation.identitystore import FileStore, StoredIdentity
from foundation.msalhttp import issuer_http_client
from guard.authz.options import AuthzOptions
from guard.authz.provider import AuthorizerConfig
from guard.credentials import ClientCredential
from guard.reviews import ResourceAttributes, SubjectAccessReview
from guard.server import readiness
from hub import directory
from kubearc.cli import app
from tests.clusters import SUB, ConnectedCluster, connected
from tests.conftest import FakeClock, RunningHub
from tests.test_guard_server import make_sp, make_user, write_tls

pytestmark = pytest.mark.sqlite_only
ROOT = Path(__file__).resolve().parents[1]
AUDIENCE = "api://kubearc-hub"
HUB_SCOPE = f"{AUDIENCE}/.default"
PASSWORD = "correct horse battery"  # make_user's
AUTHZ = "providers/Microsoft.Authorization"
VIEWER = "63f0a09d-1495-4db4-a681-037d84835eb4"  # Azure Arc Kubernetes Viewer
CLUSTER_ADMIN = "8393591c-06b9-48a2-a542-1bd6b377f6a2"  # Azure Arc Kubernetes Cluster Admin
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
PODS_READ = "Microsoft.Kubernetes/connectedClusters/pods/read"
# `kubearc guard serve` with everything but authorization set (the files need not exist: the
# flag checks come first).
SERVE_ARGS = (
    "guard",
    "serve",
    "--tls-cert",
    "c",
    "--tls-key",
    "k",
    "--client-ca",
    "ca",
    "--issuer",
    "https://i",
)


@pytest.fixture(autouse=True)
def _issuer_quirks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(directory, "SCRYPT_N", 2**10)  # cheap password hashes for tests
    # requests ignores msal's `verify=` when these are set (psf/requests#3829).
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


def msal_user_token(hub: RunningHub, upn: str) -> str:
    """A user token the way `kubearc login` gets one: msal's password grant at the hub's issuer."""
    client = issuer_http_client(hub.ca, hub.hub.issuer)
    app_ = msal.PublicClientApplication(
        "kubearc-cli", oidc_authority=hub.hub.issuer, verify=hub.ca, http_client=client
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            result = app_.acquire_token_by_username_password(upn, PASSWORD, scopes=[HUB_SCOPE])
    finally:
        client.close()  # msal's keep-alive connection would hold the hub's shutdown
    assert "access_token" in result, result
    return str(result["access_token"])


def assign(owner: httpx.Client, scope: str, role: str, principal: str, kind: str = "User") -> None:
    """A role assignment through the hub's ARM-shaped API, as `az role assignment create` makes it."""
    body = {
        "properties": {
            "roleDefinitionId": f"/subscriptions/{SUB}/{AUTHZ}/roleDefinitions/{role}",
            "principalId": principal,
            "principalType": kind,
        }
    }
    url = f"{scope}/{AUTHZ}/roleAssignments/{uuid.uuid4()}"
    response = owner.put(url, params={"api-version": "2022-04-01"}, json=body)
    assert response.status_code == 201, response.text


def save_identity(directory_: Path, cluster: ConnectedCluster, hub: RunningHub) -> None:
    """What `kubearc agent identity --store file:DIR` leaves behind."""
    assert cluster.identity is not None
    stored = StoredIdentity(
        cluster.identity, hub.hub.cluster_ca.cert, dt.datetime.now(dt.UTC), cluster.resource_id
    )
    asyncio.run(FileStore(directory_).save(stored))


class GuardProcess:
    """`python -m kubearc.cli guard serve ...`, its ports read from its start-up line."""

    def __init__(self, tls: Path, args: list[str], log: Path) -> None:
        self.tls, self.log = tls, log
        cmd = [sys.executable, "-m", "kubearc.cli", "guard", "serve"]
        cmd += ["--tls-cert", str(tls / "tls.crt"), "--tls-key", str(tls / "tls.key")]
        cmd += ["--client-ca", str(tls / "client-ca.crt"), "--port", "0", "--health-port", "0", *args]
        skip = ("KUBEARC_", "KUBERNETES_", "KUBECONFIG", "HTTP_PROXY", "HTTPS_PROXY", "REQUESTS_CA_BUNDLE")
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(skip)}  # none of the caller's
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while not (found := re.search(r"reviews on https://[^:]+:(\d+), probes on :(\d+)", self.output)):
            assert self.proc.poll() is None, self.output
            assert time.monotonic() < deadline, self.output
            time.sleep(0.05)
        self.port, self.health_port = int(found[1]), int(found[2])

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def health(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.health_port}{path}", timeout=5)

    def client(self, cert: bool = True) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.tls / "ca.crt"))
        if cert:
            ctx.load_cert_chain(str(self.tls / "c.crt"), str(self.tls / "c.key"))
        return httpx.Client(base_url=f"https://127.0.0.1:{self.port}", verify=ctx, timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def guard_process(tmp_path: Path) -> Iterator[list[GuardProcess]]:
    started: list[GuardProcess] = []
    yield started
    for proc in started:
        proc.stop()


def token_review(version: str, token: str) -> dict[str, Any]:
    """Exactly what kube-apiserver's webhook token authenticator posts."""
    return {
        "apiVersion": f"authentication.k8s.io/{version}",
        "kind": "TokenReview",
        "metadata": {"creationTimestamp": None},
        "spec": {"token": token, "audiences": ["https://kubernetes.default.svc"]},
        "status": {"user": {}},
    }


def access_review(version: str, user: dict[str, Any], attributes: dict[str, str]) -> dict[str, Any]:
    """What kube-apiserver's webhook authorizer posts for the user the TokenReview returned."""
    groups = [*user.get("groups", []), "system:authenticated"]
    spec: dict[str, Any] = {
        "resourceAttributes": attributes,
        "user": user["username"],
        # v1beta1 spells the field `group`.
        ("groups" if version == "v1" else "group"): groups,
        "uid": user.get("uid", ""),
    }
    if user.get("extra"):
        spec["extra"] = user["extra"]
    return {
        "kind": "SubjectAccessReview",
        "apiVersion": f"authorization.k8s.io/{version}",
        "metadata": {"creationTimestamp": None},
        "spec": spec,
        "status": {"allowed": False},
    }


GET_PODS_DEV = {"namespace": "dev", "verb": "get", "version": "v1", "resource": "pods", "name": "web-0"}
GET_PODS_OTHER = {"namespace": "other", "verb": "get", "version": "v1", "resource": "pods"}
CREATE_DEPLOY_DEV = {
    "namespace": "dev",
    "verb": "create",
    "group": "apps",
    "version": "v1",
    "resource": "deployments",
}
DELETE_NODES = {"verb": "delete", "version": "v1", "resource": "nodes", "name": "node-1"}
GET_CONFIGMAPS_DEV = {"namespace": "dev", "verb": "get", "version": "v1", "resource": "configmaps"}


def test_guard_process_answers_reviews_from_hub_rbac(
    hub: RunningHub, tmp_path: Path, guard_process: list[GuardProcess]
) -> None:
    cluster = connected(hub, f"e2e-{uuid.uuid4().hex[:6]}")
    rid = cluster.resource_id
    write_tls(tmp_path)
    store = tmp_path / "identity"
    guard = GuardProcess(
        tmp_path,
        [
            "--issuer", hub.hub.issuer, "--audience", AUDIENCE, "--issuer-ca", hub.ca,
            "--cluster-resource-id", rid, "--checkaccess-url", hub.url, "--checkaccess-ca", hub.ca,
            "--identity", f"file:{store}", "--deadline", "1s", "--failure-policy", "deny",
        ],
        tmp_path / "guard.log",
    )  # fmt: skip
    guard_process.append(guard)

    # No identity in the store yet: alive, not ready, and both the probe and the log say why.
    assert guard.health("/healthz").text == "ok"
    deadline = time.monotonic() + 15
    while "guard not ready yet" not in guard.output:
        assert time.monotonic() < deadline, guard.output
        time.sleep(0.05)
    waiting = guard.health("/readyz")
    assert waiting.status_code == 503 and "no identity certificate" in waiting.text, waiting.text
    assert "checkAccess credential" in waiting.text and str(store) in waiting.text
    save_identity(store, cluster, hub)  # the identity agent's first certificate arrives

    # Users sign in with msal; roles are assigned through the hub's API by a subscription Owner.
    alice, _ = make_user(hub, "alice@kubearc.test", groups=0)
    bob, (admins,) = make_user(hub, "bob@kubearc.test", groups=1)
    owner_oid = str(uuid.uuid4())
    hub.assign(owner_oid, "Owner", f"/subscriptions/{SUB}")
    with hub.client(hub.token(owner_oid)) as owner:
        assign(owner, f"{rid}/namespaces/dev", VIEWER, alice)
        assign(owner, rid, CLUSTER_ADMIN, admins, "Group")
    alice_token = msal_user_token(hub, "alice@kubearc.test")
    bob_token = msal_user_token(hub, "bob@kubearc.test")

    deadline = time.monotonic() + 15
    while guard.health("/readyz").status_code != 200:  # backs off 0.5, 1, 2 s between tries
        assert time.monotonic() < deadline, guard.output
        time.sleep(0.1)

    with guard.client() as client:
        users = {}
        for name, token, oid, groups in (
            ("alice", alice_token, alice, []),
            ("bob", bob_token, bob, [admins]),
        ):
            for version in ("v1", "v1beta1"):
                response = client.post("/tokenreviews", content=json.dumps(token_review(version, token)))
                assert response.status_code == 200, response.text
                assert response.json() == {
                    "apiVersion": f"authentication.k8s.io/{version}",
                    "kind": "TokenReview",
                    "status": {
                        "authenticated": True,
                        "user": {
                            "username": f"{name}@kubearc.test",
                            "uid": oid,
                            **({"groups": groups} if groups else {}),
                            "extra": {"oid": [oid]},
                        },
                    },
                }
            users[name] = response.json()["status"]["user"]

        def sar(version: str, user: dict[str, Any], attributes: dict[str, str]) -> dict[str, Any]:
            response = client.post(
                "/subjectaccessreviews", content=json.dumps(access_review(version, user, attributes))
            )
            assert response.status_code == 200, response.text
            doc: dict[str, Any] = response.json()
            assert (doc["apiVersion"], doc["kind"]) == (
                f"authorization.k8s.io/{version}",
                "SubjectAccessReview",
            )
            return doc["status"]

        for version in ("v1", "v1beta1"):
            assert sar(version, users["alice"], GET_PODS_DEV) == {
                "allowed": True,
                "reason": f"Azure RBAC allows {PODS_READ} at {rid}/namespaces/dev",
            }
            for attributes, action, scope in (
                (GET_PODS_OTHER, PODS_READ, f"{rid}/namespaces/other"),
                (
                    CREATE_DEPLOY_DEV,
                    "Microsoft.Kubernetes/connectedClusters/apps/deployments/write",
                    f"{rid}/namespaces/dev",
                ),
            ):
                # NotAllowed is NoOpinion: Kubernetes RBAC, next in the chain, may still allow it.
                assert sar(version, users["alice"], attributes) == {
                    "allowed": False,
                    "reason": f"no Azure role assignment grants {action} at {scope}",
                }
            assert sar(version, users["bob"], DELETE_NODES) == {
                "allowed": True,
                "reason": f"Azure RBAC allows Microsoft.Kubernetes/connectedClusters/nodes/delete at {rid}",
            }
        assert sar("v1", users["alice"], DELETE_NODES)["allowed"] is False

        # An Audit-ID header, when a caller sends one (a real apiserver does not), becomes the audit
        # line's request id; a body over 1 MiB (sent in chunks) is refused with a 400 that says so;
        # a body split in chunks is read whole.
        audit_id = str(uuid.uuid4())
        body = json.dumps(access_review("v1", users["alice"], GET_PODS_DEV)).encode()
        chunked = client.post(
            "/subjectaccessreviews",
            content=iter([body[:40], body[40:]]),
            headers={"Audit-ID": audit_id, "Content-Type": "application/json"},
        )
        assert chunked.status_code == 200 and chunked.json()["status"]["allowed"] is True, chunked.text
        huge = client.post("/tokenreviews", content=iter([b" " * 65536] * 17))
        assert huge.status_code == 400 and "exceeds" in huge.json()["error"], huge.text

        # A system: user and a user without extra.oid (not from Entra): NoOpinion, never checkAccess.
        system = {"username": "system:serviceaccount:kube-system:deployer", "extra": {"oid": [alice]}}
        status = sar("v1", system, GET_PODS_DEV)
        assert status["allowed"] is False and "denied" not in status and "system user" in status["reason"]
        no_oid = {"username": "alice@kubearc.test", "uid": alice}
        status = sar("v1", no_oid, GET_PODS_DEV)
        assert status["allowed"] is False and "denied" not in status
        assert "no Entra object id" in status["reason"]

    # A caller without a client certificate is refused by the TLS handshake itself.
    with guard.client(cert=False) as anonymous, pytest.raises(httpx.TransportError):
        anonymous.post("/tokenreviews", json=token_review("v1", alice_token))
    # In TLS 1.2 the handshake itself fails; in TLS 1.3 the client's side of it completes first,
    # and the server hangs up on the (missing) certificate before reading a byte of HTTP.
    tls12 = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", guard.port), timeout=5) as sock,
        pytest.raises(ssl.SSLError),
    ):
        tls12.wrap_socket(sock, server_hostname="127.0.0.1")
    tls13 = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    with (
        socket.create_connection(("127.0.0.1", guard.port), timeout=5) as sock,
        tls13.wrap_socket(sock, server_hostname="127.0.0.1") as conn,
    ):
        conn.sendall(b"POST /tokenreviews HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        try:
            answer = conn.recv(1024)
        except (ssl.SSLError, ConnectionError):
            answer = b""
        assert answer == b"", answer

    # The hub goes away. Cached decisions still answer; a fresh question gets the failure policy
    # (deny here), with a reason, as HTTP 200 within the 1 s deadline: never a 5xx the apiserver retries.
    hub.stop()
    with guard.client() as client:
        cached = client.post("/subjectaccessreviews", json=access_review("v1", users["alice"], GET_PODS_DEV))
        assert cached.json()["status"]["allowed"] is True
        start = time.monotonic()
        fresh = client.post(
            "/subjectaccessreviews", json=access_review("v1", users["alice"], GET_CONFIGMAPS_DEV)
        )
        elapsed = time.monotonic() - start
    assert fresh.status_code == 200 and elapsed < 1.5, (fresh.status_code, elapsed)
    status = fresh.json()["status"]
    assert status["allowed"] is False and status["denied"] is True, status
    assert status["reason"].startswith("Azure RBAC unavailable"), status
    assert "checkAccess" in status.get("evaluationError", ""), status

    # No token or key ever reaches the log.
    log = guard.output
    for secret in (alice_token, bob_token, (store / "tls.key").read_text().strip().splitlines()[1]):
        assert secret not in log
    assert '"msg":"subjectaccessreview"' in log and "SubjectAccessReviews go to Azure RBAC" in log
    assert f'"request_id":"{audit_id}"' in log
    guard.stop()
    assert guard.proc.returncode == 0, log


def test_identity_credential_reads_renewed_certificates(
    hub: RunningHub, tmp_path: Path, clock: FakeClock
) -> None:
    cluster = connected(hub, f"renew-{uuid.uuid4().hex[:6]}")
    credential = IdentityCredential(FileStore(tmp_path), hub.url, reload_after=0)

    async def token() -> str:
        return await credential()

    with pytest.raises(CredentialError, match="no identity certificate"):
        asyncio.run(token())
    save_identity(tmp_path, cluster, hub)
    first = asyncio.run(token())
    assert asyncio.run(token()) == first and credential.mints == 1  # same certificate: token reused
    clock.advance(days=46)  # inside the renewal window
    assert cluster.renew().status_code == 200
    save_identity(tmp_path, cluster, hub)
    second = asyncio.run(token())
    assert second != first and credential.mints == 2
    assert jwt.get_unverified_header(second)["x5c"] != jwt.get_unverified_header(first)["x5c"]
    assert jwt.decode(second, options={"verify_signature": False})["aud"] == hub.url


async def test_entra_app_credential_with_msal(hub: RunningHub) -> None:
    """The ARM path (`--arm-client-id`): msal client credentials, here against the hub's issuer."""
    cluster = connected(hub, f"app-{uuid.uuid4().hex[:6]}")
    app_id, secret = make_sp(hub)
    sp_oid = jwt.decode(
        (await asyncio.to_thread(_app_token, hub, app_id, secret)), options={"verify_signature": False}
    )["oid"]
    hub.assign(sp_oid, "Contributor", cluster.resource_id)  # may call checkAccess/action there
    user = str(uuid.uuid4())
    hub.assign(user, "Azure Arc Kubernetes Viewer", f"{cluster.resource_id}/namespaces/dev")
    settings = AuthzOptions(AuthorizerConfig(cluster.resource_id), hub.url, hub.ca)
    review = SubjectAccessReview(
        "authorization.k8s.io/v1",
        "u",
        "",
        [],
        {"oid": [user]},
        ResourceAttributes("dev", "get", resource="pods"),
        None,
    )

    good = ClientCredential(app_id, secret, hub.hub.issuer, HUB_SCOPE, ca_file=hub.ca)
    authorizer = settings.build(good)
    try:
        await readiness(("checkAccess credential", good))()
        assert authorizer.decide_now(review) is None  # not asked yet: needs checkAccess
        decision = await authorizer.authorize(review, time.monotonic() + 10)
        assert decision.allowed, decision
        assert authorizer.decide_now(review) == decision  # the server's no-await path, from the cache
        assert await good() == await good()  # cached, not fetched per review
    finally:
        await authorizer.client.aclose()
        good.close()

    bad = ClientCredential(app_id, "not-the-secret", hub.hub.issuer, HUB_SCOPE, ca_file=hub.ca)
    authorizer = settings.build(bad)
    try:
        with pytest.raises(Exception, match=r"checkAccess credential: .*Invalid client secret") as info:
            await readiness(("checkAccess credential", bad))()
        assert "not-the-secret" not in str(info.value)
        decision = await authorizer.authorize(review, time.monotonic() + 10)
        assert not decision.allowed and decision.reason == "Azure RBAC unavailable (unavailable)"
        assert (
            "no bearer token" in decision.evaluation_error
            and "not-the-secret" not in decision.evaluation_error
        )
    finally:
        await authorizer.client.aclose()
        bad.close()


def _app_token(hub: RunningHub, app_id: str, secret: str) -> str:
    client = issuer_http_client(hub.ca, hub.hub.issuer)
    try:
        app_ = msal.ConfidentialClientApplication(
            app_id, client_credential=secret, oidc_authority=hub.hub.issuer, verify=hub.ca, http_client=client
        )
        return str(app_.acquire_token_for_client([HUB_SCOPE])["access_token"])
    finally:
        client.close()


RID = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c1"


@pytest.mark.parametrize(
    ("extra", "env", "hint", "message"),
    [
        ([], {}, "--cluster-resource-id", "needs a checkAccess credential"),
        (["--identity", "file:/x", "--arm-client-id", "a"], {}, "--identity", "not both"),
        (["--identity", "nowhere"], {}, "--identity", "file:DIR or secret:NAMESPACE/NAME"),
        (
            ["--identity", "file:/x", "--checkaccess-url", "https://management.azure.com"],
            {},
            "--identity",
            "hub",
        ),
        (["--arm-client-id", "a"], {}, "--arm-client-id", "KUBEARC_GUARD_ARM_CLIENT_SECRET"),
        (
            ["--arm-client-id", "a"],
            {"KUBEARC_GUARD_ARM_CLIENT_SECRET": "s3cr3t"},
            "--arm-client-id",
            "--arm-authority",
        ),
        (
            ["--arm-client-id", "a", "--arm-authority", "https://x", "--arm-scope", "api://x/read"],
            {"KUBEARC_GUARD_ARM_CLIENT_SECRET": "s3cr3t"},
            "--arm-scope",
            ".default",
        ),
        (["--identity", "file:/x", "--checkaccess-url", "http://hub"], {}, "--checkaccess-url", "https://"),
        (["--identity", "file:/x", "--cluster-type", "aks"], {}, "--cluster-type", "managedClusters"),
        (["--identity", "file:/x", "--not-allowed", "maybe"], {}, "--not-allowed", "noopinion or deny"),
        (["--identity", "file:/x", "--without-oid", "allow"], {}, "--without-oid", "noopinion or deny"),
        (["--identity", "file:/x", "--allow-ttl", "soon"], {}, "--allow-ttl", "invalid duration"),
        (["--identity", "file:/x", "--deny-ttl", "-5s"], {}, "--deny-ttl", "positive"),
        (
            ["--identity", "file:/x", "--checkaccess-ca", "/no/such/ca.crt"],
            {},
            "--checkaccess-ca",
            "not a readable",
        ),
    ],
)
def test_bad_authorization_flags_name_the_problem(
    tmp_path: Path, extra: list[str], env: dict[str, str], hint: str, message: str
) -> None:
    args = list(SERVE_ARGS)
    args += ["--audience", "a", "--checkaccess-url", "https://hub:8443", "--cluster-resource-id", RID]
    result = CliRunner().invoke(app, [*args, *extra], env={"KUBEARC_GUARD_ARM_CLIENT_SECRET": "", **env})
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.replace("│", " ").split())
    assert hint in flat and message in flat, flat
    assert "s3cr3t" not in flat


@pytest.mark.parametrize(
    ("rid", "cluster_type"),
    [
        (
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters",
            "connectedClusters",
        ),
        (RID, "managedClusters"),
        ("c1", "connectedClusters"),
    ],
)
def test_cluster_resource_id_must_name_a_cluster(rid: str, cluster_type: str) -> None:
    args = list(SERVE_ARGS)
    args += ["--audience", "a", "--identity", "file:/x", "--checkaccess-url", "https://hub"]
    result = CliRunner().invoke(app, [*args, "--cluster-resource-id", rid, "--cluster-type", cluster_type])
    assert result.exit_code == 2
    assert "/subscriptions/SUB/resourceGroups/RG/providers/" in " ".join(
        result.output.replace("│", " ").split()
    )


def test_credentials_only_with_a_cluster() -> None:
    args = list(SERVE_ARGS)
    result = CliRunner().invoke(app, [*args, "--audience", "a", "--identity", "file:/x"])
    assert result.exit_code == 2 and "--cluster-resource-id" in result.output


# (flag, what it is given, what the one line must say): each file `guard serve` reads at start.
BAD_FILES = [
    ("--tls-cert", "missing.crt", "cannot read"),
    ("--tls-key", "missing.key", "cannot read"),
    ("--client-ca", "missing-ca.crt", "cannot read"),
    ("--token-file", "missing.csv", "cannot read"),
    ("--tls-cert", "tls.key", "no PEM certificate"),
    ("--tls-key", "tls.crt", "not a PEM private key"),
    ("--tls-key", "c.key", "is not the key of"),
    ("--client-ca", "tls.key", "no PEM certificate"),
    ("--token-file", ".", "cannot read"),  # a directory
]


@pytest.mark.parametrize(("flag", "given", "message"), BAD_FILES, ids=[f"{f}={g}" for f, g, _ in BAD_FILES])
def test_guard_serve_names_a_missing_or_unusable_file_before_it_serves(
    tmp_path: Path, flag: str, given: str, message: str
) -> None:
    write_tls(tmp_path)
    (tmp_path / "tokens.csv").write_text(f"{uuid.uuid4().hex},deployer,1001\n")
    files = {
        "--tls-cert": "tls.crt",
        "--tls-key": "tls.key",
        "--client-ca": "client-ca.crt",
        "--token-file": "tokens.csv",
        flag: given,
    }
    cmd = [sys.executable, "-m", "kubearc.cli", "guard", "serve", "--port", "0", "--health-port", "0"]
    for name, file in files.items():
        cmd += [name, str(tmp_path / file)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: ") and "reviews on" not in done.stdout + done.stderr
    assert flag in done.stderr and str(tmp_path / given) in done.stderr and message in done.stderr, (
        done.stderr
    )
