"""Bad bodies, bad tokens and unknown resources get a clear 4xx, and change nothing."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import jwt
import pytest

from foundation import pki, tokens
from hub.issuer.tokens import issue_access_token
from tests.clusters import SUB, connected, create_cluster, onboarder
from tests.conftest import RunningHub

CC = f"/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Kubernetes/connectedClusters"


def error(r: object) -> tuple[int, str, str]:
    body = r.json()["error"]  # type: ignore[attr-defined]
    return r.status_code, body["code"], body["message"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b"[]", 400, "invalid request body"),
        (b'{"location": "x"}', 400, "properties: Field required"),
        (b'{"properties": {"agentPublicKeyCertificate": "not-base64!"}}', 400, "agentPublicKeyCertificate"),
        (b'{"properties": {"agentPublicKeyCertificate": "aGVsbG8="}}', 400, "agentPublicKeyCertificate"),
        (
            b'{"properties": {"agentPublicKeyCertificate": "aGVsbG8=", "totalCoreCount": -1}}',
            400,
            "totalCoreCount",
        ),
    ],
)
def test_bad_cluster_bodies(hub: RunningHub, body: bytes, status: int, fragment: str) -> None:
    token = onboarder(hub)
    with hub.client(token) as c:
        r = c.put(f"{CC}/bad", content=body, headers={"content-type": "application/json"})
        code, _, message = error(r)
        assert code == status and fragment in message, message
        assert c.get(f"{CC}/bad").status_code in (403, 404)  # nothing was created


def test_bad_names_and_unknown_resources(hub: RunningHub) -> None:
    owner = str(uuid.uuid4())
    hub.assign(owner, "Owner", "/")
    with hub.client(hub.token(owner)) as c:
        assert error(c.get(f"{CC}/missing"))[:2] == (404, "ResourceNotFound")
        assert error(c.get(f"{CC}/-bad-name-"))[:2] == (400, "InvalidResourceName")
        assert c.post(f"{CC}/missing/listClusterUserCredential").status_code == 404
        assert c.get("/no/such/path").status_code == 404


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer garbage",
        "Bearer a.b.c",
    ],
)
def test_missing_or_malformed_tokens(hub: RunningHub, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    with hub.client() as c:
        r = c.get(f"{CC}/x", headers=headers)
    status, code, message = error(r)
    assert status == 401 and code == "AuthenticationFailed" and message
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_forged_and_foreign_tokens(hub: RunningHub) -> None:
    owner = str(uuid.uuid4())
    hub.assign(owner, "Owner", "/")
    good = hub.token(owner)
    claims = jwt.decode(good, options={"verify_signature": False})
    header = jwt.get_unverified_header(good)
    other_key = pki.new_key()
    cases = {
        "foreign issuer": jwt.encode({**claims, "iss": "https://evil.example/v2.0"}, other_key, "ES256"),
        "wrong key": jwt.encode(claims, other_key, "ES256", headers={"kid": header["kid"]}),
        "alg none": jwt.encode(claims, None, "none", headers={"kid": header["kid"]}),  # type: ignore[arg-type]
        "wrong audience": hub.token(owner, audience="api://someone-else"),
        "unknown kid": jwt.encode(claims, other_key, "ES256", headers={"kid": "nope"}),
    }
    cases["expired"], _ = issue_access_token(
        hub.hub,
        oid=owner,
        audience="api://kubearc-hub",
        kind="user",
        client_id="t",
        ttl=dt.timedelta(minutes=-5),
    )
    with hub.client() as c:
        for name, token in cases.items():
            r = c.get(f"{CC}/x", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, name
        tampered = good.split(".")
        tampered[1] = jwt.utils.base64url_encode(b'{"oid":"x"}').decode()
        r = c.get(f"{CC}/x", headers={"Authorization": "Bearer " + ".".join(tampered)})
        assert r.status_code == 401
        assert c.get(f"{CC}/x", headers={"Authorization": f"Bearer {good}"}).status_code == 404


def test_bad_agent_tokens(hub: RunningHub) -> None:
    cluster = connected(hub, "agent-tokens")
    assert cluster.identity is not None
    # A self-signed certificate that looks like an identity certificate.
    rogue_ca = pki.create_ca("rogue")
    rogue = pki.issue_keypair(rogue_ca, "agent", client=True)
    cases = [
        tokens.make_agent_token(rogue, hub.url),
        tokens.make_agent_token(cluster.identity, "https://other-hub"),
        tokens.make_agent_token(cluster.identity, hub.url, ttl=-120),
        tokens.make_agent_token(cluster.identity, hub.url, ttl=86400),  # too long-lived
        tokens.make_agent_token(pki.KeyPair(pki.new_key(), cluster.identity.cert), hub.url),  # stolen cert
    ]
    with hub.client() as c:
        for token in cases:
            r = c.post("/agent/v1/heartbeat", json={}, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, r.text


def test_bad_agent_bodies_change_nothing(hub: RunningHub) -> None:
    token = onboarder(hub)
    cluster = connected(hub, "agent-bodies", token)
    with cluster.agent_client() as c:
        assert (
            c.put(
                "/agent/v1/metadata", json={"kubernetesVersion": "v1.31.2", "totalNodeCount": 3}
            ).status_code
            == 200
        )
        for bad in (
            {"totalNodeCount": -1},
            {"totalNodeCount": "three"},
            {"clusterCertificateAuthority": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"},
        ):
            status, _, message = error(c.put("/agent/v1/metadata", json=bad))
            assert status == 400 and "invalid request body" in message
        status, _, message = error(c.post("/agent/v1/logs", json={"entries": [{"agent": "x"}]}))
        assert status == 400 and "message" in message
        big = {"entries": [{"agent": "a", "message": "m"}] * 1001}
        assert c.post("/agent/v1/logs", json=big).status_code == 400
    with hub.client(token) as c:
        props = c.get(cluster.resource_id).json()["properties"]
    assert props["kubernetesVersion"] == "v1.31.2" and props["totalNodeCount"] == 3


def test_onboarding_errors_name_the_problem(hub: RunningHub) -> None:
    token = onboarder(hub)
    cluster, _ = create_cluster(hub, "onb-errors", token)
    good = tokens.make_onboarding_assertion(cluster.onboarding_key, cluster.resource_id, hub.url)
    csr = pki.make_csr(pki.new_key(), "x").decode()
    with hub.client() as c:
        cases = [
            ({"resourceId": f"{CC}/nope", "assertion": good, "csr": csr}, 404, "was not found"),
            (
                {"resourceId": cluster.resource_id, "assertion": "x.y.z", "csr": csr},
                401,
                "assertion rejected",
            ),
            ({"resourceId": cluster.resource_id, "assertion": good, "csr": "garbage"}, 400, "csr"),
            ({"resourceId": cluster.resource_id, "csr": csr}, 400, "assertion"),
        ]
        for body, status, fragment in cases:
            code, _, message = error(c.post("/agent/v1/identity/certificate", json=body))
            assert code == status and fragment in message, (body, message)


# Claims whose JSON type is wrong: PyJWT lets `int()`-able values through (a numeric string for
# `exp`), and arithmetic on them used to answer 500. Every verifier answers 401 naming the claim.
WRONG_TYPES = [
    ("exp", "str", lambda now: str(now + 300)),
    ("exp", "bool", lambda now: True),
    ("iat", "str", lambda now: str(now)),
    ("iat", "list", lambda now: [now]),
    ("nbf", "str", lambda now: str(now - 5)),
    ("aud", "number", lambda now: 42),
    ("aud", "list of numbers", lambda now: [42]),
    ("iss", "number", lambda now: 7),
    ("sub", "object", lambda now: {"id": "x"}),
]


def _signed(claims: dict[str, object], key: pki.PrivateKey, headers: dict[str, object]) -> str:
    """A JWS over exactly these claims (PyJWT's `encode` refuses some wrong types itself)."""
    payload = json.dumps(claims).encode()
    return jwt.api_jws.PyJWS().encode(payload, key, algorithm=tokens.algorithm_for(key), headers=headers)  # type: ignore[arg-type]


@pytest.mark.parametrize(("claim", "kind", "value"), WRONG_TYPES, ids=[f"{c}-{k}" for c, k, _ in WRONG_TYPES])
def test_an_agent_token_claim_of_the_wrong_type_is_a_401(
    hub: RunningHub, claim: str, kind: str, value: object
) -> None:
    cluster = connected(hub, f"claim-{claim}-{kind.replace(' ', '-')}")
    assert cluster.identity is not None
    good = tokens.make_agent_token(cluster.identity, hub.url)
    claims = jwt.decode(good, options={"verify_signature": False})
    now = int(claims["iat"])
    bad = _signed({**claims, claim: value(now)}, cluster.identity.key, jwt.get_unverified_header(good))  # type: ignore[operator]
    with hub.client() as c:
        r = c.post("/agent/v1/heartbeat", json={}, headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401, r.text
        assert claim in r.json()["error"]["message"]
        ok = c.post("/agent/v1/heartbeat", json={}, headers={"Authorization": f"Bearer {good}"})
        assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(("claim", "kind", "value"), WRONG_TYPES, ids=[f"{c}-{k}" for c, k, _ in WRONG_TYPES])
def test_an_onboarding_assertion_claim_of_the_wrong_type_is_a_401(
    hub: RunningHub, claim: str, kind: str, value: object
) -> None:
    cluster, _ = create_cluster(hub, f"onb-{claim}-{kind.replace(' ', '-')}", onboarder(hub))
    good = tokens.make_onboarding_assertion(cluster.onboarding_key, cluster.resource_id, hub.url)
    claims = jwt.decode(good, options={"verify_signature": False})
    bad = _signed({**claims, claim: value(int(claims["iat"]))}, cluster.onboarding_key, {})  # type: ignore[operator]
    body = {
        "resourceId": cluster.resource_id,
        "assertion": bad,
        "csr": pki.make_csr(pki.new_key(), "x").decode(),
    }
    with hub.client() as c:
        code, _, message = error(c.post("/agent/v1/identity/certificate", json=body))
    assert code == 401 and claim in message, message


@pytest.mark.parametrize(("claim", "kind", "value"), WRONG_TYPES, ids=[f"{c}-{k}" for c, k, _ in WRONG_TYPES])
def test_a_user_token_claim_of_the_wrong_type_is_a_401(
    hub: RunningHub, claim: str, kind: str, value: object
) -> None:
    owner = str(uuid.uuid4())
    hub.assign(owner, "Owner", "/")
    good = hub.token(owner)
    claims = jwt.decode(good, options={"verify_signature": False})
    header = jwt.get_unverified_header(good)
    bad = _signed({**claims, claim: value(int(claims["iat"]))}, hub.hub.issuer_key, header)  # type: ignore[operator]
    with hub.client() as c:
        r = c.get(f"{CC}/x", headers={"Authorization": f"Bearer {bad}"})
    assert r.status_code == 401, r.text
    assert claim in r.json()["error"]["message"]


def test_an_unknown_route_is_a_json_404(hub: RunningHub) -> None:
    with hub.client(hub.token()) as c:
        for path in ("/no/such/path", f"/subscriptions/{SUB}/nope", "/agent/v1/nope"):
            r = c.get(path)
            assert r.headers["content-type"] == "application/json" and error(r)[:2] == (404, "NotFound")
            assert path in error(r)[2]
        wrong_method = c.delete("/healthz")
        assert error(wrong_method)[:2] == (405, "MethodNotAllowed") and "GET" in wrong_method.headers["allow"]


def test_arm_path_segments_match_case_insensitively(hub: RunningHub) -> None:
    owner = str(uuid.uuid4())
    hub.assign(owner, "Owner", "/")
    cluster = connected(hub, "any-case")
    lower = f"/subscriptions/{SUB}/resourcegroups/rg1/providers/microsoft.kubernetes/connectedclusters"
    upper = f"/SUBSCRIPTIONS/{SUB}/RESOURCEGROUPS/rg1/PROVIDERS/MICROSOFT.KUBERNETES/CONNECTEDCLUSTERS"
    with hub.client(hub.token(owner)) as c:
        canonical = c.get(cluster.resource_id)
        assert canonical.status_code == 200, canonical.text
        for base in (lower, upper):
            r = c.get(f"{base}/any-case")
            assert r.status_code == 200, r.text
            assert r.json()["id"] == canonical.json()["id"] == cluster.resource_id
            assert "any-case" in [x["name"] for x in c.get(base).json()["value"]]
        roles = c.get(f"{lower}/any-case/providers/microsoft.authorization/roleassignments")
        assert roles.status_code == 200, roles.text
        assert c.delete(f"{lower}/any-case").status_code == 200
        assert error(c.get(cluster.resource_id))[:2] == (404, "ResourceNotFound")


@pytest.mark.parametrize(
    "path",
    [
        "/subscriptions/my-subscription/resourceGroups/rg1/providers/Microsoft.Kubernetes/connectedClusters/c",
        "/subscriptions/my-subscription/providers/Microsoft.Kubernetes/connectedClusters",
        "/subscriptions/00000000-0000-0000-0000-00000000000/providers/Microsoft.Authorization/roleAssignments",
        "/SUBSCRIPTIONS/not-a-guid/resourcegroups/rg1/providers/microsoft.kubernetes/connectedclusters",
    ],
)
def test_a_subscription_id_that_is_not_a_guid_is_a_400(hub: RunningHub, path: str) -> None:
    owner = str(uuid.uuid4())
    hub.assign(owner, "Owner", "/")
    with hub.client(hub.token(owner)) as c:
        status, code, message = error(c.get(path))
    assert (status, code) == (400, "InvalidSubscriptionId") and "GUID" in message, message


DEEP = b"[" * 100_000 + b"]" * 100_000


def test_a_deeply_nested_json_body_is_a_400_not_a_500(hub: RunningHub) -> None:
    owner = str(uuid.uuid4())
    hub.assign(owner, "Owner", "/")
    cluster = connected(hub, "deep")
    json_type = {"content-type": "application/json"}
    with hub.client(hub.token(owner)) as c:
        for method, path in [
            ("PUT", f"{CC}/deep-new"),
            ("PATCH", cluster.resource_id),
            ("POST", f"/subscriptions/{SUB}/providers/Microsoft.Authorization/checkAccess"),
        ]:
            status, code, message = error(c.request(method, path, content=DEEP, headers=json_type))
            assert (status, code) == (400, "InvalidRequestContent") and "nested" in message, (path, message)
        assert error(c.get(f"{CC}/deep-new"))[0] == 404  # nothing was created
    with cluster.agent_client() as agent:
        r = agent.put("/agent/v1/metadata", content=DEEP, headers=json_type)
        assert error(r)[0] == 400
        assert agent.post("/agent/v1/heartbeat", json={}).status_code == 200  # the hub is fine


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "text/json"]
)
def test_a_body_that_is_not_declared_json_is_a_415(hub: RunningHub, content_type: str | None) -> None:
    token = onboarder(hub)
    body = json.dumps(
        {"properties": {"agentPublicKeyCertificate": pki.public_key_der_b64(pki.new_key().public_key())}}
    )
    headers = {"content-type": content_type} if content_type else {}
    with hub.client(token) as c:
        r = c.put(f"{CC}/media", content=body.encode(), headers=headers)
        status, code, message = error(r)
        assert (status, code) == (415, "UnsupportedMediaType") and "application/json" in message, message
        assert c.get(f"{CC}/media").status_code == 404  # nothing was created
        declared = c.put(
            f"{CC}/media", content=body.encode(), headers={"content-type": "application/json; charset=utf-8"}
        )
        assert declared.status_code == 201, declared.text
