"""guard over real mutual TLS, with tokens from the hub's local issuer and its Graph-compatible directory."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import typer
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from foundation import pki
from guard.app import GuardState
from guard.authn.chain import AuthnChain
from guard.authn.graph import GraphGroups, GraphSettings
from guard.authn.oidc import OidcAuthenticator
from guard.authn.static import StaticTokens
from guard.config import GuardConfig
from guard.reviews import Decision, SubjectAccessReview
from guard.server import GuardThread
from hub import directory
from hub.issuer import graph
from kubearc.commands.guard import guard_kubeconfig
from tests.conftest import RunningHub
from tests.guard_doubles import PlainAuthenticator, PlainAuthorizer

pytestmark = pytest.mark.sqlite_only
AUDIENCE = "api://kubearc-hub"


class NoOpinion:
    """Test double of the authorizer interface (SAR end-to-end is wired with the real one elsewhere)."""

    async def authorize(self, review: SubjectAccessReview, deadline: float) -> Decision:
        return Decision.no_opinion("test authorizer has no opinion")


@dataclass
class Guard:
    thread: GuardThread
    chain: AuthnChain
    oidc: OidcAuthenticator
    graph: GraphGroups
    ca: Path
    client: tuple[str, str]
    stranger: tuple[str, str]  # a client certificate from another CA
    static_token: str

    @property
    def url(self) -> str:
        assert self.thread.server
        return f"https://127.0.0.1:{self.thread.server.port}"

    @property
    def health_url(self) -> str:
        assert self.thread.server
        return f"http://127.0.0.1:{self.thread.server.health_port}"

    def http(self, cert: tuple[str, str] | None = None) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if cert:
            ctx.load_cert_chain(*cert)
        return httpx.Client(base_url=self.url, verify=ctx, timeout=15)

    def review(self, token: str, version: str = "v1", audiences: list[str] | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {"token": token}
        if audiences is not None:
            spec["audiences"] = audiences
        body = {"apiVersion": f"authentication.k8s.io/{version}", "kind": "TokenReview", "spec": spec}
        with self.http(self.client) as client:
            response = client.post("/tokenreviews", json=body)
        assert response.status_code == 200, response.text
        return response.json()


def make_sp(hub: RunningHub) -> tuple[str, str]:
    async def go() -> tuple[str, str]:
        async with hub.hub.sessions() as session:
            _, app_id, secret = await directory.create_service_principal(session, "guard")
            return app_id, secret

    return hub.run(go())


def make_user(hub: RunningHub, upn: str, groups: int) -> tuple[str, list[str]]:
    async def go() -> tuple[str, list[str]]:
        async with hub.hub.sessions() as session:
            user = await directory.create_user(session, upn, "correct horse battery", commit=False)
            ids = [(await directory.create_group(session, f"g{i}", commit=False)).id for i in range(groups)]
            await session.flush()
            for gid in ids:
                await directory.add_member(session, gid, user.id, commit=False)
            await session.commit()
            return user.id, sorted(ids)

    return hub.run(go())


def write_tls(where: Path) -> None:
    """Guard's serving pair (ca.crt), the apiserver's client pair (c.*) and a stranger's (o.*)."""
    server_ca, client_ca, other_ca = (
        pki.create_ca("guard CA"),
        pki.create_ca("apiserver CA"),
        pki.create_ca("x"),
    )
    server_ca.write(where / "ca.crt", where / "ca.key")
    client_ca.write(where / "client-ca.crt", where / "client-ca.key")
    pki.issue_keypair(server_ca, "guard", sans=["127.0.0.1"], server=True).write(
        where / "tls.crt", where / "tls.key"
    )
    pki.issue_keypair(client_ca, "apiserver", client=True).write(where / "c.crt", where / "c.key")
    pki.issue_keypair(other_ca, "apiserver", client=True).write(where / "o.crt", where / "o.key")


@pytest.fixture
def guard(hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Guard]:
    monkeypatch.setattr(directory, "SCRYPT_N", 2**10)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    write_tls(tmp_path)
    static_token = uuid.uuid4().hex
    (tmp_path / "tokens.csv").write_text(f'{static_token},deployer,1001,"ops,deployers"\n')
    app_id, secret = make_sp(hub)
    made: dict[str, Any] = {}

    async def make() -> tuple[GuardState, Any]:
        settings = GraphSettings(
            client_id=app_id,
            client_secret=secret,
            authority=hub.hub.issuer,
            oidc_authority=True,
            base_url=f"{hub.url}/v1.0",
            ca_file=hub.ca,
        )
        made["graph"] = await asyncio.to_thread(GraphGroups, settings)
        made["oidc"] = OidcAuthenticator([hub.hub.issuer], [AUDIENCE], ca_file=hub.ca, graph=made["graph"])
        made["chain"] = AuthnChain([made["oidc"]], StaticTokens.load(tmp_path / "tokens.csv"))
        config = GuardConfig(
            tls_cert=tmp_path / "tls.crt",
            tls_key=tmp_path / "tls.key",
            client_ca=tmp_path / "client-ca.crt",
            port=0,
            health_port=0,
            deadline=5.0,
        )
        return GuardState(config, made["chain"], PlainAuthorizer(NoOpinion().authorize)), made["chain"].ready

    thread = GuardThread(make).start()
    g = Guard(
        thread,
        made["chain"],
        made["oidc"],
        made["graph"],
        tmp_path / "ca.crt",
        (str(tmp_path / "c.crt"), str(tmp_path / "c.key")),
        (str(tmp_path / "o.crt"), str(tmp_path / "o.key")),
        static_token,
    )
    deadline = time.monotonic() + 15
    while httpx.get(f"{g.health_url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "guard never became ready"
        time.sleep(0.02)
    try:
        yield g
    finally:
        thread.run(g.graph.aclose())
        thread.stop()


def test_token_review_v1_and_v1beta1_as_the_apiserver_sends_them(guard: Guard, hub: RunningHub) -> None:
    oid = str(uuid.uuid4())
    groups = [str(uuid.uuid4()), str(uuid.uuid4())]
    token = hub.token(oid, groups=groups, upn="alice@kubearc.test")
    for version in ("v1", "v1beta1"):
        # Exactly what kube-apiserver's webhook token authenticator posts.
        body = {
            "apiVersion": f"authentication.k8s.io/{version}",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": None},
            "spec": {"token": token, "audiences": ["https://kubernetes.default.svc", AUDIENCE]},
            "status": {"user": {}},
        }
        with guard.http(guard.client) as client:
            response = client.post("/tokenreviews", content=json.dumps(body))
        assert response.status_code == 200, response.text
        assert response.json() == {
            "apiVersion": f"authentication.k8s.io/{version}",
            "kind": "TokenReview",
            "status": {
                "authenticated": True,
                "user": {
                    "username": "alice@kubearc.test",
                    "uid": oid,
                    "groups": groups,
                    "extra": {"oid": [oid]},
                },
                "audiences": [AUDIENCE],
            },
        }
    # Without requested audiences no status.audiences (the apiserver then assumes its own).
    assert "audiences" not in guard.review(token)["status"]
    # An app token has no upn: the username falls back to the oid.
    app = guard.review(hub.token(oid, kind="app"))["status"]["user"]
    assert app["username"] == oid and app["uid"] == oid


def test_static_token_file(guard: Guard) -> None:
    status = guard.review(guard.static_token)["status"]
    assert status == {
        "authenticated": True,
        "user": {"username": "deployer", "uid": "1001", "groups": ["ops", "deployers"]},
    }
    assert guard.review("not-" + guard.static_token)["status"]["error"] == "unknown static token"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _raw(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def bad_tokens(hub: RunningHub) -> list[tuple[str, str, str]]:
    """(name, token, a fragment of the expected reason)."""
    key, kid, iss = hub.hub.issuer_key, hub.hub.issuer_kid, hub.hub.issuer
    now = int(time.time())
    oid = str(uuid.uuid4())
    good = {"iss": iss, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 600, "oid": oid, "tid": "t"}

    def sign(
        claims: dict[str, Any], headers: dict[str, Any] | None = None, k: Any = key, alg: str = "RS256"
    ) -> str:
        return jwt.encode(claims, k, algorithm=alg, headers={"kid": kid, **(headers or {})})

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    valid = sign(good)
    h, p, s = valid.split(".")
    tampered = json.loads(base64.urlsafe_b64decode(p + "==")) | {"oid": str(uuid.uuid4())}
    without = {k: v for k, v in good.items() if k != "exp"}
    return [
        ("expired", sign(good | {"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}), "expired"),
        ("not yet valid", sign(good | {"nbf": now + 3600, "exp": now + 7200}), "not yet valid"),
        ("wrong audience", sign(good | {"aud": "api://someone-else"}), "audience"),
        ("audience list without ours", sign(good | {"aud": ["a", "b"]}), "audience"),
        ("no audience", sign({k: v for k, v in good.items() if k != "aud"}), "aud"),
        ("wrong issuer", sign(good | {"iss": "https://evil.example/v2.0"}), "not trusted"),
        ("no issuer", sign({k: v for k, v in good.items() if k != "iss"}), "not trusted"),
        ("no expiry", sign(without), "exp"),
        ("expiry not a number", sign(good | {"exp": "tomorrow"}), "exp"),
        ("unknown kid", sign(good, {"kid": "not-a-key-of-this-issuer"}), "unknown key id"),
        ("no kid", jwt.encode(good, key, algorithm="RS256"), "kid"),
        ("signed by another key", sign(good, k=other_key), "signature"),
        ("alg none", _raw({"alg": "none", "typ": "JWT", "kid": kid}, good, lambda _: b""), "not allowed"),
        (
            "HS256 with the public key as secret",
            _raw(
                {"alg": "HS256", "typ": "JWT", "kid": kid},
                good,
                lambda m: hmac.new(public_pem, m, hashlib.sha256).digest(),
            ),
            "not allowed",
        ),
        ("RS512 claimed for an RS256 key", sign(good, alg="RS512"), "alg"),
        ("tampered payload", f"{h}.{_b64(json.dumps(tampered).encode())}.{s}", "signature"),
        ("signature stripped", f"{h}.{p}.", "signature"),
        ("truncated", valid[:-12], "signature|padding"),
        ("cut after the payload", f"{h}.{p}", "unknown static token"),
        ("garbage", "this is not a token", "unknown static token"),
        ("empty segments", "..", "malformed"),
        ("header not base64", f"!!!.{p}.{s}", "malformed"),
        ("header not JSON", f"{_b64(b'nope')}.{p}.{s}", "malformed"),
        ("wrong typ (PoP)", sign(good, {"typ": "pop"}), "type"),
        ("no oid", sign({k: v for k, v in good.items() if k != "oid"}), "oid"),
        ("groups not a list", sign(good | {"groups": "admins"}), "groups"),
        (
            "overage without oid",
            sign({**{k: v for k, v in good.items() if k != "oid"}, "_claim_names": {"groups": "src1"}}),
            "oid",
        ),
    ]


def test_bad_tokens_are_refused_with_a_reason(guard: Guard, hub: RunningHub) -> None:
    table = bad_tokens(hub)
    assert len(table) >= 20
    for name, token, reason in table:
        status = guard.review(token)["status"]
        assert status["authenticated"] is False, name
        assert "user" not in status, name
        assert any(r in status["error"].lower() for r in reason.lower().split("|")), (name, status["error"])
        assert token not in status["error"] or not token, name


def test_group_overage_resolves_all_250_groups(
    guard: Guard, hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graph, "PAGE_SIZE", 40)  # 250 groups: 7 pages through @odata.nextLink
    oid, groups = make_user(hub, "carol@kubearc.test", groups=250)
    token = hub.token(oid, groups=groups, upn="carol@kubearc.test")
    assert "groups" not in jwt.decode(token, options={"verify_signature": False})
    status = guard.review(token)["status"]
    assert status["authenticated"] is True, status
    assert sorted(status["user"]["groups"]) == groups and len(groups) == 250
    # A second token of the same user: groups from the per-user cache, no second Graph lookup.
    again = guard.review(hub.token(oid, groups=groups, upn="carol@kubearc.test"))["status"]
    assert sorted(again["user"]["groups"]) == groups
    assert guard.graph.lookups == 1


def test_token_cache_skips_verification(
    guard: Guard, hub: RunningHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kubearc.guard.audit")
    token = hub.token(groups=["g"])
    before = guard.oidc.verifications
    first = guard.review(token)
    for _ in range(5):
        assert guard.review(token) == first
    assert guard.oidc.verifications - before == 1
    assert guard.chain.hits >= 5
    # The cache is keyed by digest: nothing in it is the token.
    assert all(token.encode() not in k for k in guard.chain._cache)
    # One audit line per decision, with a request id, and never the token.
    audits = [r for r in caplog.records if r.name == "kubearc.guard.audit"]
    assert len(audits) == 6 and all(getattr(r, "request_id", None) for r in audits)
    assert [getattr(r, "cached", None) for r in audits] == [False] + [True] * 5
    assert not any(token in str(vars(r)) for r in audits)


def test_review_without_or_with_a_foreign_client_certificate_is_refused(
    guard: Guard, hub: RunningHub
) -> None:
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": hub.token()}}
    for cert in (None, guard.stranger):
        with guard.http(cert) as client, pytest.raises(httpx.TransportError):
            client.post("/tokenreviews", json=body)
    # Probes and metrics are on the plain health port, without certificates.
    assert httpx.get(f"{guard.health_url}/healthz").text == "ok"
    metrics = httpx.get(f"{guard.health_url}/metrics").text
    assert 'guard_reviews_total{kind="tokenreview",result="authenticated"}' not in metrics  # none got through
    assert guard.review(hub.token())["status"]["authenticated"] is True
    metrics = httpx.get(f"{guard.health_url}/metrics").text
    assert 'guard_reviews_total{kind="tokenreview",result="authenticated"} 1.0' in metrics
    assert "guard_http_request_duration_seconds_bucket" in metrics and 'le="5e-05",method="POST"' in metrics


def test_malformed_bodies_get_400_with_a_message(guard: Guard) -> None:
    cases: list[tuple[bytes, str]] = [
        (b"{not json", "not JSON"),
        (b"[]", "JSON object"),
        (
            json.dumps(
                {"apiVersion": "authentication.k8s.io/v2", "kind": "TokenReview", "spec": {}}
            ).encode(),
            "apiVersion",
        ),
        (json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "Pod", "spec": {}}).encode(), "kind"),
        (
            json.dumps(
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {}}
            ).encode(),
            "token",
        ),
        (
            json.dumps(
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": 3}}
            ).encode(),
            "string",
        ),
    ]
    with guard.http(guard.client) as client:
        for body, fragment in cases:
            response = client.post("/tokenreviews", content=body)
            assert response.status_code == 400, body
            assert fragment in response.json()["error"], (body, response.text)
        sar = client.post("/subjectaccessreviews", content=b'{"kind":"SubjectAccessReview"}')
        assert sar.status_code == 400 and "apiVersion" in sar.json()["error"]
        answer = client.post(
            "/subjectaccessreviews",
            json={
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {"user": "alice", "resourceAttributes": {"verb": "get", "resource": "pods"}},
            },
        )
        assert answer.status_code == 200
        assert answer.json()["status"] == {"allowed": False, "reason": "test authorizer has no opinion"}


class Slow:
    """An authenticator and authorizer that never answer in time, or fail outright."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def authenticate(self, token: str, audiences: list[str]) -> Any:
        if self.fail:
            raise RuntimeError("boom")
        await asyncio.sleep(30)

    async def authorize(self, review: SubjectAccessReview, deadline: float) -> Decision:
        if self.fail:
            raise RuntimeError("boom")
        await asyncio.sleep(30)
        return Decision.allow("too late")


@pytest.mark.parametrize("fail", [False, True])
def test_deadline_and_faults_answer_with_the_failure_policy_never_5xx(tmp_path: Path, fail: bool) -> None:
    write_tls(tmp_path)

    async def make() -> tuple[GuardState, Any]:
        config = GuardConfig(
            tls_cert=tmp_path / "tls.crt",
            tls_key=tmp_path / "tls.key",
            client_ca=tmp_path / "client-ca.crt",
            port=0,
            health_port=0,
            deadline=0.3,
        )
        authorizer = PlainAuthorizer(Slow(fail).authorize, failure="deny")
        return GuardState(config, PlainAuthenticator(Slow(fail).authenticate), authorizer), None

    thread = GuardThread(make).start()
    try:
        assert thread.server
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        ctx.load_cert_chain(str(tmp_path / "c.crt"), str(tmp_path / "c.key"))
        with httpx.Client(
            base_url=f"https://127.0.0.1:{thread.server.port}", verify=ctx, timeout=10
        ) as client:
            start = time.monotonic()
            tr = client.post(
                "/tokenreviews",
                json={
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "spec": {"token": "x"},
                },
            )
            sar = client.post(
                "/subjectaccessreviews",
                json={
                    "apiVersion": "authorization.k8s.io/v1beta1",
                    "kind": "SubjectAccessReview",
                    "spec": {
                        "user": "u",
                        "group": ["g"],
                        "nonResourceAttributes": {"path": "/x", "verb": "get"},
                    },
                },
            )
            assert time.monotonic() - start < 5
        assert tr.status_code == 200 and sar.status_code == 200
        assert tr.json()["status"]["authenticated"] is False
        reason = "internal error" if fail else "within 0.3s"
        assert reason in tr.json()["status"]["error"]
        assert sar.json()["apiVersion"] == "authorization.k8s.io/v1beta1"
        status = sar.json()["status"]
        assert status["allowed"] is False and status["denied"] is True and reason in status["reason"]
    finally:
        thread.stop()


def test_guard_kubeconfig_files(tmp_path: Path) -> None:
    write_tls(tmp_path)
    app = typer.Typer()
    app.command()(guard_kubeconfig)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "--server", "https://10.0.0.5:8443/",
            "--ca-file", str(tmp_path / "ca.crt"),
            "--client-cert", str(tmp_path / "c.crt"),
            "--client-key", str(tmp_path / "c.key"),
            "--out-dir", str(out),
            "--config-dir", "/etc/kubernetes/guard",
            "--failure-policy", "Deny",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    authn = yaml.safe_load((out / "authn-webhook.kubeconfig").read_text())
    assert authn["clusters"][0]["cluster"]["server"] == "https://10.0.0.5:8443/tokenreviews"
    ca_data = authn["clusters"][0]["cluster"]["certificate-authority-data"]
    assert base64.b64decode(ca_data) == (tmp_path / "ca.crt").read_bytes()
    user = authn["users"][0]["user"]
    assert base64.b64decode(user["client-key-data"]) == (tmp_path / "c.key").read_bytes()
    authz = yaml.safe_load((out / "authz-webhook.kubeconfig").read_text())
    assert authz["clusters"][0]["cluster"]["server"] == "https://10.0.0.5:8443/subjectaccessreviews"
    assert (out / "authz-webhook.kubeconfig").stat().st_mode & 0o077 == 0
    config = yaml.safe_load((out / "authorization-config.yaml").read_text())
    assert (config["apiVersion"], config["kind"]) == (
        "apiserver.config.k8s.io/v1",
        "AuthorizationConfiguration",
    )
    assert [a["type"] for a in config["authorizers"]] == ["Node", "Webhook", "RBAC"]
    assert config["authorizers"][1]["webhook"] == {
        "timeout": "5s",
        "authorizedTTL": "5m",
        "unauthorizedTTL": "30s",
        "failurePolicy": "Deny",
        "subjectAccessReviewVersion": "v1",
        "matchConditionSubjectAccessReviewVersion": "v1",
        "connectionInfo": {
            "type": "KubeConfigFile",
            "kubeConfigFile": "/etc/kubernetes/guard/authz-webhook.kubeconfig",
        },
        "matchConditions": [{"expression": "!request.user.startsWith('system:')"}],
    }
    bad = CliRunner().invoke(app, ["--server", "https://x", "--ca-file", "a", "--client-cert", "b",
                                   "--client-key", "c", "--timeout", "45s"])  # fmt: skip
    assert bad.exit_code != 0 and "30s" in bad.output
