"""The hub's local issuer against real msal over real HTTPS, and its Graph-compatible directory."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import msal
import pytest

from hub import directory
from hub.auth import Authenticator
from hub.issuer import graph
from tests.conftest import FakeClock, RunningHub

HUB_SCOPE = "api://kubearc-hub/.default"
PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
def _msal_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests ignores msal's `verify=` when these are set (psf/requests#3829); kubearc.session copes."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    # msal probes https://<host>/common/userrealm/ before a password grant but drops the port, so on
    # a test hub's random port it would knock on localhost:443. Tell msal what it learns itself from a
    # 404 there: no user realm on this host. (kubearc.session redirects the probe to the hub instead.)
    msal.authority.Authority._domains_without_user_realm_discovery.add("localhost")
    monkeypatch.setattr(directory, "SCRYPT_N", 2**10)  # cheap hashes for tests; each hash records its cost


_open_apps: list[msal.ClientApplication] = []


@pytest.fixture(autouse=True)
def _close_msal(start_hub: Any) -> Iterator[None]:
    """Close msal's keep-alive connections before the hub stops (it would wait for them)."""
    yield
    while _open_apps:
        _open_apps.pop().http_client.close()


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def make_user(hub: RunningHub, upn: str, password: str = PASSWORD, groups: int = 0) -> tuple[str, list[str]]:
    """A user in `groups` new groups, created in one transaction."""

    async def go() -> tuple[str, list[str]]:
        async with hub.hub.sessions() as session:
            user = await directory.create_user(session, upn, password, commit=False)
            ids = []
            for i in range(groups):
                group = await directory.create_group(session, f"{upn} group {i}", commit=False)
                ids.append(group.id)
            await session.flush()
            for gid in ids:
                await directory.add_member(session, gid, user.id, commit=False)
            await session.commit()
            return user.id, sorted(ids)

    return hub.run(go())


def make_sp(hub: RunningHub, name: str = "guard") -> tuple[str, str, str]:
    async def go() -> tuple[str, str, str]:
        async with hub.hub.sessions() as session:
            obj, app_id, secret = await directory.create_service_principal(session, name)
            return obj.id, app_id, secret

    return hub.run(go())


def public_app(hub: RunningHub) -> msal.PublicClientApplication:
    app = msal.PublicClientApplication("kubearc-cli", oidc_authority=hub.hub.issuer, verify=hub.ca)
    _open_apps.append(app)
    return app


def confidential_app(hub: RunningHub, app_id: str, secret: str) -> msal.ConfidentialClientApplication:
    app = msal.ConfidentialClientApplication(
        app_id, client_credential=secret, oidc_authority=hub.hub.issuer, verify=hub.ca
    )
    _open_apps.append(app)
    return app


def password_token(
    app: msal.PublicClientApplication, username: str, password: str, scope: str = HUB_SCOPE
) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return app.acquire_token_by_username_password(username, password, scopes=[scope])


def member_groups(hub: RunningHub, token: str, ref: str, collection: str = "users") -> httpx.Response:
    with hub.client(token) as client:
        return client.post(f"/v1.0/{collection}/{ref}/getMemberGroups", json={"securityEnabledOnly": False})


def test_discovery_documents(hub: RunningHub) -> None:
    tenant = hub.hub.tenant_id
    with hub.client() as client:
        meta = client.get(f"/{tenant}/v2.0/.well-known/openid-configuration").json()
        assert meta["issuer"] == hub.hub.issuer == f"{hub.url}/{tenant}/v2.0"
        assert meta["token_endpoint"] == f"{hub.url}/{tenant}/oauth2/v2.0/token"
        assert meta["jwks_uri"] == f"{hub.url}/{tenant}/discovery/v2.0/keys"
        assert meta["id_token_signing_alg_values_supported"] == ["RS256"]
        assert set(meta["grant_types_supported"]) == {
            "authorization_code",
            "client_credentials",
            "password",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:device_code",
        }
        assert client.get(meta["jwks_uri"]).json() == {"keys": [hub.hub.issuer_jwk()]}
        cli = client.get("/.well-known/kubearc-configuration").json()
        assert cli == {
            "issuer": hub.hub.issuer,
            "tenantId": tenant,
            "hubAudience": "api://kubearc-hub",
            "cliClientId": "kubearc-cli",
            "entraTenants": [],
            "relayUrl": hub.config.relay,
            "relayIssuer": hub.hub.issuer,
        }
        wrong = client.get("/00000000-0000-0000-0000-000000000000/v2.0/.well-known/openid-configuration")
        assert wrong.status_code == 400
        assert wrong.json()["error_codes"] == [90002] and "not found" in wrong.json()["error_description"]
        authorize = client.get(f"/{tenant}/oauth2/v2.0/authorize")  # no client: a page, no redirect
        assert authorize.status_code == 400 and "client_id" in authorize.text


def test_client_credentials_with_msal(hub: RunningHub) -> None:
    sp_oid, app_id, secret = make_sp(hub)
    app = confidential_app(hub, app_id, secret)
    result = app.acquire_token_for_client([HUB_SCOPE])
    assert result.get("token_type") == "Bearer", result
    claims = _claims(result["access_token"])
    assert claims["aud"] == "api://kubearc-hub" and claims["iss"] == hub.hub.issuer
    assert (claims["oid"], claims["idtyp"], claims["azp"], claims["tid"]) == (
        sp_oid,
        "app",
        app_id,
        hub.hub.tenant_id,
    )
    principal = hub.run(Authenticator(hub.hub).authenticate_user(result["access_token"]))
    assert (principal.kind, principal.object_id) == ("servicePrincipal", sp_oid)

    graph_token = app.acquire_token_for_client(["https://graph.microsoft.com/.default"])["access_token"]
    assert _claims(graph_token)["aud"] == "https://graph.microsoft.com"
    user_oid, groups = make_user(hub, "someone@kubearc.test", groups=2)
    for token in (result["access_token"], graph_token):  # a service principal may read anyone's groups
        response = member_groups(hub, token, user_oid)
        assert response.status_code == 200, response.text
        assert response.json()["value"] == groups
    assert member_groups(hub, graph_token, "someone@KUBEARC.test").json()["value"] == groups

    wrong = confidential_app(hub, app_id, "not-the-secret").acquire_token_for_client([HUB_SCOPE])
    assert wrong["error"] == "invalid_client" and wrong["error_codes"] == [7000215]
    unknown_app = confidential_app(hub, "0b5e1d3f-0000-4000-8000-000000000000", secret)
    unknown = unknown_app.acquire_token_for_client([HUB_SCOPE])
    assert unknown["error"] == "invalid_client" and unknown["error_codes"] == [700016]
    not_default = app.acquire_token_for_client(["api://kubearc-hub/user_impersonation"])
    assert not_default["error"] == "invalid_scope" and not_default["error_codes"] == [1002012]


def test_password_and_refresh_with_msal(hub: RunningHub, clock: FakeClock) -> None:
    oid, (inner,) = make_user(hub, "alice@kubearc.test", groups=1)

    async def nest() -> str:
        async with hub.hub.sessions() as session:
            outer = await directory.create_group(session, "outer")
            await directory.add_member(session, outer.id, inner)
            return outer.id

    outer = hub.run(nest())
    app = public_app(hub)
    result = password_token(app, "Alice@KubeArc.test", PASSWORD, "api://kubearc-hub/user_impersonation")
    assert "access_token" in result, result
    assert result["token_type"] == "Bearer" and result["expires_in"] > 0 and "refresh_token" in result
    claims = _claims(result["access_token"])
    assert claims["aud"] == "api://kubearc-hub" and claims["scp"] == "user_impersonation"
    assert (claims["oid"], claims["upn"], claims["idtyp"]) == (oid, "alice@kubearc.test", "user")
    assert sorted(claims["groups"]) == sorted([inner, outer])  # nested groups included
    id_claims = result["id_token_claims"]
    assert (id_claims["aud"], id_claims["oid"], id_claims["tid"]) == ("kubearc-cli", oid, hub.hub.tenant_id)
    assert id_claims["preferred_username"] == "alice@kubearc.test" and id_claims["ver"] == "2.0"
    jwt.decode(
        result["id_token"], jwt.PyJWK(hub.hub.issuer_jwk()).key, algorithms=["RS256"], audience="kubearc-cli"
    )
    (account,) = app.get_accounts()
    assert account["username"] == "alice@kubearc.test"
    assert account["home_account_id"] == f"{oid}.{hub.hub.tenant_id}"

    principal = hub.run(Authenticator(hub.hub).authenticate_user(result["access_token"]))
    assert (principal.kind, principal.name, sorted(principal.groups)) == (
        "user",
        "alice@kubearc.test",
        sorted([inner, outer]),
    )
    response = member_groups(hub, result["access_token"], oid)
    assert response.json()["value"] == sorted([inner, outer])
    with hub.client(result["access_token"]) as client:
        me = client.get("/v1.0/users/alice@kubearc.test").json()
        assert (me["id"], me["userPrincipalName"]) == (oid, "alice@kubearc.test")
        assert client.get(f"/v1.0/groups/{outer}").json()["displayName"] == "outer"

    refreshed = app.acquire_token_silent(
        ["api://kubearc-hub/user_impersonation"], account=account, force_refresh=True
    )
    assert refreshed["access_token"] != result["access_token"]
    # Tokens issued three hours ago have expired; msal refreshes them with its refresh token.
    clock.advance(hours=-3)
    stale = app.acquire_token_silent(
        ["api://kubearc-hub/user_impersonation"], account=account, force_refresh=True
    )
    assert member_groups(hub, stale["access_token"], oid).status_code == 401
    clock.advance(hours=3)
    refreshed = app.acquire_token_silent(
        ["api://kubearc-hub/user_impersonation"], account=account, force_refresh=True
    )
    assert refreshed and "access_token" in refreshed, refreshed
    assert _claims(refreshed["access_token"])["exp"] > clock.now.timestamp()
    assert member_groups(hub, refreshed["access_token"], oid).status_code == 200
    # Another resource from the same refresh token (Entra refresh tokens are multi-resource).
    graph_token = app.acquire_token_silent(["https://graph.microsoft.com/.default"], account=account)
    assert _claims(graph_token["access_token"])["aud"] == "https://graph.microsoft.com"

    # A new password revokes the refresh tokens issued before it.
    hub.run(_set_password(hub, oid, "a whole new password"))
    revoked = app.acquire_token_silent(
        ["api://kubearc-hub/user_impersonation"], account=account, force_refresh=True
    )
    assert revoked is None or revoked.get("error_codes") == [50173], revoked


async def _set_password(hub: RunningHub, oid: str, password: str) -> None:
    async with hub.hub.sessions() as session:
        await directory.set_password(session, oid, password)


def test_token_endpoint_errors(hub: RunningHub) -> None:
    make_user(hub, "bob@kubearc.test")
    app = public_app(hub)
    wrong = password_token(app, "bob@kubearc.test", "wrong password!")
    assert (wrong["error"], wrong["error_codes"]) == ("invalid_grant", [50126])
    assert wrong["error_description"].startswith("AADSTS50126: ")
    assert {"timestamp", "trace_id", "correlation_id"} <= wrong.keys()
    unknown = password_token(app, "nobody@kubearc.test", PASSWORD)
    assert (unknown["error"], unknown["error_codes"]) == ("invalid_grant", [50034])
    token_url = f"/{hub.hub.tenant_id}/oauth2/v2.0/token"
    with hub.client() as client:

        def post(**form: str) -> httpx.Response:
            return client.post(token_url, data=form)

        r = post(grant_type="jwt-bearer", client_id="kubearc-cli", code="x")
        assert (r.status_code, r.json()["error"], r.json()["error_codes"]) == (
            400,
            "unsupported_grant_type",
            [70003],
        )
        r = post(client_id="kubearc-cli")
        assert (r.status_code, r.json()["error"], r.json()["error_codes"]) == (
            400,
            "invalid_request",
            [900144],
        )
        r = post(
            grant_type="password",
            client_id="kubearc-cli",
            username="bob@kubearc.test",
            password=PASSWORD,
            scope="api://kubearc-hub/a https://graph.microsoft.com/b",
        )
        assert (r.status_code, r.json()["error"], r.json()["error_codes"]) == (400, "invalid_scope", [28000])
        r = post(
            grant_type="password",
            client_id="kubearc-cli",
            client_secret="x",
            username="bob@kubearc.test",
            password=PASSWORD,
        )
        assert (r.status_code, r.json()["error"]) == (401, "invalid_client")
        r = post(grant_type="refresh_token", client_id="kubearc-cli", refresh_token="kart1.forged")
        assert (r.status_code, r.json()["error"]) == (400, "invalid_grant")
        r = post(grant_type="client_credentials", client_id="kubearc-cli", scope=HUB_SCOPE)
        assert (r.status_code, r.json()["error"]) == (401, "invalid_client")
        r = client.post(
            "/11111111-1111-1111-1111-111111111111/oauth2/v2.0/token", data={"grant_type": "password"}
        )
        assert r.status_code == 400 and r.json()["error_codes"] == [90002]
        r = client.post(token_url, json={"grant_type": "password"})
        assert r.status_code == 400 and r.json()["error"] == "invalid_request"
        # Without scopes a user token is for the hub; openid/profile/offline_access name no resource.
        r = post(
            grant_type="password",
            client_id="kubearc-cli",
            username="BOB@kubearc.test",
            password=PASSWORD,
            scope="openid profile offline_access",
        )
        assert r.status_code == 200 and _claims(r.json()["access_token"])["aud"] == "api://kubearc-hub"
        assert {"id_token", "refresh_token", "client_info"} <= r.json().keys()


def test_group_overage_and_paging(hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graph, "PAGE_SIZE", 40)
    oid, groups = make_user(hub, "carol@kubearc.test", groups=250)
    result = password_token(public_app(hub), "carol@kubearc.test", PASSWORD)
    claims = _claims(result["access_token"])
    assert "groups" not in claims
    assert claims["_claim_names"] == {"groups": "src1"}
    endpoint = claims["_claim_sources"]["src1"]["endpoint"]
    assert endpoint == f"{hub.url}/v1.0/users/{oid}/getMemberGroups"

    seen: list[str] = []
    pages = 0
    with hub.client(result["access_token"]) as client:
        response = client.post(endpoint, json={"securityEnabledOnly": True})
        while True:
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page["value"]) <= 40
            seen += page["value"]
            pages += 1
            if "@odata.nextLink" not in page:
                break
            # nextLink may be followed with GET or with POST (body ignored).
            link = page["@odata.nextLink"]
            response = (
                client.get(link) if pages % 2 else client.post(link, json={"securityEnabledOnly": True})
            )
        assert client.get(f"/v1.0/users/{oid}/getMemberGroups").status_code == 405
        assert client.get(f"/v1.0/users/{oid}/getMemberGroups?$skiptoken=garbage").status_code == 400
    assert pages == 7 and seen == groups
    principal = hub.run(Authenticator(hub.hub).authenticate_user(result["access_token"]))
    assert sorted(principal.groups) == groups


def test_graph_access_rules(hub: RunningHub) -> None:
    dave, _ = make_user(hub, "dave@kubearc.test", groups=1)
    erin, (erins_group,) = make_user(hub, "erin@kubearc.test", groups=1)
    token = password_token(public_app(hub), "dave@kubearc.test", PASSWORD)["access_token"]
    for path in (
        f"/v1.0/users/{erin}/getMemberGroups",
        f"/v1.0/directoryObjects/{erin}/getMemberGroups",
        "/v1.0/users/erin@kubearc.test/getMemberGroups",
    ):
        with hub.client(token) as client:
            denied = client.post(path, json={"securityEnabledOnly": False})
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "Authorization_RequestDenied"
    with hub.client(token) as client:
        assert client.get(f"/v1.0/users/{erin}").status_code == 403
        assert client.get(f"/v1.0/groups/{erins_group}").status_code == 403
        assert client.post(f"/v1.0/users/{dave}/getMemberGroups", json={}).status_code == 400
    assert member_groups(hub, token, dave, "directoryObjects").status_code == 200
    with hub.client() as client:
        missing = client.post(f"/v1.0/users/{dave}/getMemberGroups", json={"securityEnabledOnly": False})
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "InvalidAuthenticationToken"
    other_audience = hub.token(dave, audience="api://something-else")
    assert member_groups(hub, other_audience, dave).status_code == 401

    _, app_id, secret = make_sp(hub)
    sp_token = confidential_app(hub, app_id, secret).acquire_token_for_client([HUB_SCOPE])["access_token"]
    absent = member_groups(hub, sp_token, "6a1f3e64-0000-4000-8000-000000000000")
    assert absent.status_code == 404 and absent.json()["error"]["code"] == "Request_ResourceNotFound"
    assert member_groups(hub, sp_token, erins_group).status_code == 404  # a group is not a user
    assert member_groups(hub, sp_token, erins_group, "directoryObjects").json()["value"] == []
    with hub.client(sp_token) as client:
        assert client.get(f"/v1.0/groups/{erins_group}").json()["securityEnabled"] is True
        assert client.get("/v1.0/users/erin@kubearc.test").json()["id"] == erin


def test_directory_rules(hub: RunningHub) -> None:
    async def go() -> None:
        async with hub.hub.sessions() as session:
            user = await directory.create_user(session, "Frank@Kubearc.Test", PASSWORD, "Frank")
            assert user.login == "frank@kubearc.test"
            with pytest.raises(ValueError, match="already exists"):
                await directory.create_user(session, "FRANK@kubearc.test", PASSWORD)
            with pytest.raises(ValueError, match="user principal name"):
                await directory.create_user(session, "not-an-upn", PASSWORD)
            with pytest.raises(ValueError, match="at least 8"):
                await directory.create_user(session, "short@kubearc.test", "short")
            a = await directory.create_group(session, "a")
            b = await directory.create_group(session, "b")
            assert await directory.add_member(session, a.id, b.id)
            assert not await directory.add_member(session, a.id, b.id)  # already a member
            with pytest.raises(ValueError, match="itself"):
                await directory.add_member(session, a.id, a.id)
            with pytest.raises(ValueError, match="cycle"):
                await directory.add_member(session, b.id, a.id)
            with pytest.raises(ValueError, match="no group"):
                await directory.add_member(session, user.id, a.id)
            await directory.add_member(session, b.id, user.id)
            assert await directory.member_groups(session, user.id) == sorted([a.id, b.id])
            assert (await directory.resolve(session, "a")).id == a.id
            await directory.remove_member(session, a.id, b.id)
            assert await directory.member_groups(session, user.id) == [b.id]
            await directory.delete_object(session, b.id)
            assert await directory.member_groups(session, user.id) == []
            assert (
                await directory.check_user_password(session, "FRANK@kubearc.test", PASSWORD)
            ).id == user.id
            with pytest.raises(directory.BadCredential):
                await directory.check_user_password(session, "frank@kubearc.test", "wrong password")

    hub.run(go())
