"""Connected clusters end to end over HTTPS: onboarding, identity, heartbeats, status, isolation."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from foundation import pki, tokens
from hub import clusters as cluster_routes
from hub.resources import CLUSTER_TYPE
from kubearc.cli import app
from tests.clusters import SUB, connected, create_cluster, onboarder, signed_in_cli
from tests.conftest import FakeClock, RunningHub


def status_of(hub: RunningHub, token: str, rid: str) -> str:
    with hub.client(token) as c:
        r = c.get(rid)
    assert r.status_code == 200, r.text
    return r.json()["properties"]["connectivityStatus"]


def test_onboarding_to_connected_then_offline(hub: RunningHub, clock: FakeClock) -> None:
    token = onboarder(hub)
    cluster, r = create_cluster(hub, "edge-1", token, totalCoreCount=12)
    assert r.status_code == 201, r.text
    props = r.json()["properties"]
    assert props["connectivityStatus"] == "Connecting"
    assert props["distribution"] == "k3s" and props["totalCoreCount"] == 12

    r = cluster.onboard()
    assert r.status_code == 200, r.text
    cert = pki.load_cert(r.json()["certificate"].encode())
    ca = pki.load_cert(r.json()["caCertificate"].encode())
    assert pki.is_issued_by(cert, ca)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 90
    assert any(cluster.resource_id.lower() in uri for uri in pki.uri_sans(cert))

    assert status_of(hub, token, cluster.resource_id) == "Connecting"
    r = cluster.heartbeat()
    assert r.status_code == 200 and r.json()["connectivityStatus"] == "Connected"
    assert status_of(hub, token, cluster.resource_id) == "Connected"

    clock.advance(minutes=14)
    assert status_of(hub, token, cluster.resource_id) == "Connected"
    clock.advance(minutes=2)
    assert status_of(hub, token, cluster.resource_id) == "Offline"
    assert cluster.heartbeat().status_code == 200
    assert status_of(hub, token, cluster.resource_id) == "Connected"


def test_agent_not_installed_after_install_window(hub: RunningHub, clock: FakeClock) -> None:
    token = onboarder(hub)
    cluster, _ = create_cluster(hub, "never", token)
    clock.advance(hours=2)
    assert status_of(hub, token, cluster.resource_id) == "AgentNotInstalled"


def test_expired_certificate_stops_the_agent(hub: RunningHub, clock: FakeClock) -> None:
    token = onboarder(hub)
    cluster = connected(hub, "edge-exp", token)
    assert cluster.heartbeat().status_code == 200
    clock.advance(days=90, minutes=2)
    assert status_of(hub, token, cluster.resource_id) == "Expired"
    r = cluster.heartbeat()
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


def test_renewal_only_inside_the_window(hub: RunningHub, clock: FakeClock) -> None:
    token = onboarder(hub)
    cluster = connected(hub, "edge-renew", token)
    first = cluster.identity
    assert first is not None
    r = cluster.renew()
    assert r.status_code == 409 and r.json()["error"]["code"] == "RenewalNotAllowed"

    clock.advance(days=46)
    r = cluster.renew()
    assert r.status_code == 200, r.text
    assert cluster.identity is not None
    assert cluster.identity.cert.not_valid_after_utc > first.cert.not_valid_after_utc
    clock.advance(days=50)  # past the first certificate's expiry, inside the second's
    assert cluster.heartbeat().status_code == 200
    assert status_of(hub, token, cluster.resource_id) == "Connected"


def test_agent_of_cluster_a_cannot_act_for_cluster_b(hub: RunningHub) -> None:
    token = onboarder(hub)
    a = connected(hub, "cluster-a", token)
    b, _ = create_cluster(hub, "cluster-b", token)
    assert a.identity is not None
    # A's certificate cannot be used to onboard as B ...
    assertion = tokens.make_onboarding_assertion(a.identity.key, b.resource_id, hub.url)
    with hub.client() as c:
        r = c.post(
            "/agent/v1/identity/certificate",
            json={
                "resourceId": b.resource_id,
                "assertion": assertion,
                "csr": pki.make_csr(a.identity.key, "x").decode(),
            },
        )
    assert r.status_code == 401
    # ... nor B's onboarding assertion replayed.
    assert b.onboard().status_code == 200
    # ... nor call the user API, nor see B: every agent route acts on the caller's own cluster.
    with a.agent_client() as c:
        assert c.get(b.resource_id).status_code == 403
        who = c.get("/agent/v1/whoami").json()
    assert who["resourceId"] == a.resource_id.lower()
    a.heartbeat()
    assert status_of(hub, token, b.resource_id) == "Connecting"


def test_onboarding_assertion_cannot_be_replayed(hub: RunningHub) -> None:
    token = onboarder(hub)
    cluster, _ = create_cluster(hub, "replay", token)
    assertion = tokens.make_onboarding_assertion(cluster.onboarding_key, cluster.resource_id, hub.url)
    body = {
        "resourceId": cluster.resource_id,
        "assertion": assertion,
        "csr": pki.make_csr(pki.new_key(), "x").decode(),
    }
    with hub.client() as c:
        assert c.post("/agent/v1/identity/certificate", json=body).status_code == 200
        r = c.post("/agent/v1/identity/certificate", json=body)
    assert r.status_code == 401 and "already used" in r.json()["error"]["message"]


def test_delete_revokes_identity(hub: RunningHub) -> None:
    token = onboarder(hub)
    cluster = connected(hub, "gone", token)
    assert cluster.heartbeat().status_code == 200
    oid = str(uuid.uuid4())
    hub.assign(oid, "Owner", f"/subscriptions/{SUB}")
    with hub.client(hub.token(oid)) as c:
        assert c.delete(cluster.resource_id).status_code == 200
        assert c.get(cluster.resource_id).status_code == 404
        assert c.delete(cluster.resource_id).status_code == 204
    r = cluster.heartbeat()
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_list_shows_only_what_the_caller_may_read(hub: RunningHub) -> None:
    token = onboarder(hub)
    for name in ("l1", "l2"):
        connected(hub, name, token)
    create_cluster(hub, "other-rg", token, rg="rg2")
    reader = str(uuid.uuid4())
    hub.assign(reader, "Reader", f"/subscriptions/{SUB}/resourceGroups/rg1")
    with hub.client(hub.token(reader)) as c:
        names = [
            v["name"]
            for v in c.get(f"/subscriptions/{SUB}/providers/Microsoft.Kubernetes/connectedClusters").json()[
                "value"
            ]
        ]
        assert names == ["l1", "l2"]
        assert (
            c.get(
                f"/subscriptions/{SUB}/resourceGroups/rg2/providers/Microsoft.Kubernetes/"
                "connectedClusters/other-rg"
            ).status_code
            == 403
        )
    with hub.client(hub.token(str(uuid.uuid4()))) as c:
        assert (
            c.get(f"/subscriptions/{SUB}/providers/Microsoft.Kubernetes/connectedClusters").json()["value"]
            == []
        )


def test_reconnect_with_another_key_conflicts(hub: RunningHub) -> None:
    token = onboarder(hub)
    _, r1 = create_cluster(hub, "dup", token)
    _, r2 = create_cluster(hub, "dup", token)
    assert r1.status_code == 201
    assert r2.status_code == 409 and "different agentPublicKeyCertificate" in r2.json()["error"]["message"]


def test_a_list_pages_in_id_order_and_every_cluster_comes_once(hub: RunningHub) -> None:
    token = onboarder(hub)
    made = {create_cluster(hub, f"page-{i}", token, rg="rg-pages")[0].resource_id for i in range(5)}
    seen: list[str] = []
    pages = 0
    with hub.client(token) as c:
        path = f"/subscriptions/{SUB}/resourceGroups/rg-pages/providers/{CLUSTER_TYPE}"
        params = {"api-version": "2024-01-01", "$top": "2"}
        while True:
            page = c.get(path, params=params).json()
            pages += 1
            assert len(page["value"]) <= 2
            seen += [item["id"] for item in page["value"]]
            if "nextLink" not in page:
                break
            skip = parse_qs(urlsplit(page["nextLink"]).query)["$skipToken"][0]
            assert c.get(page["nextLink"]).json() == c.get(path, params={**params, "$skipToken": skip}).json()
            params["$skipToken"] = skip
        assert pages == 3 and len(seen) == 5 and set(seen) == made
        for bad in ({"$top": "0"}, {"$top": "1001"}, {"$top": "ten"}, {"$skipToken": "not-a-token"}):
            r = c.get(path, params={"api-version": "2024-01-01", **bad})
            assert r.status_code == 400 and ("$top" in r.text or "$skipToken" in r.text), bad


def test_cluster_list_on_the_command_line_follows_every_page(
    hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster_routes, "LIST_PAGE", 2)  # the hub runs in this process: three pages of two
    token = onboarder(hub)
    for i in range(5):
        assert create_cluster(hub, f"cli-page-{i}", token, rg="rg-cli-pages")[1].status_code == 201
    runner = signed_in_cli(
        hub, tmp_path, "lister@kubearc.test", "Azure Arc Kubernetes Viewer", f"/subscriptions/{SUB}"
    )
    listed = runner.invoke(app, ["cluster", "list", "-g", "rg-cli-pages", "-o", "json"])
    assert listed.exit_code == 0, listed.output
    assert sorted(c["name"] for c in json.loads(listed.output)) == [f"cli-page-{i}" for i in range(5)]


def test_a_token_with_a_known_certificate_but_another_key_is_refused(hub: RunningHub) -> None:
    cluster = connected(hub, "known-cert", onboarder(hub))
    assert cluster.heartbeat().status_code == 200  # the hub has now checked this certificate's chain
    assert cluster.identity is not None
    forged = tokens.make_agent_token(pki.KeyPair(pki.new_key(), cluster.identity.cert), hub.url)
    with hub.client(forged) as c:
        r = c.post("/agent/v1/heartbeat", json={})
    assert r.status_code == 401 and "invalid agent token" in r.json()["error"]["message"]
