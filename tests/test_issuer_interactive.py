"""The local issuer's interactive sign-in: the device authorization grant (RFC 8628) and the
authorization code flow with PKCE (RFC 7636), at the hub's API over real HTTPS and through real
msal, unmodified. A test plays the person: it reads the user code and fills in the pages with an
HTTP client, as a browser would post them."""

from __future__ import annotations

import datetime as dt
import html
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import msal
import pytest

from hub import directory
from tests.conftest import MovingClock, RunningHub

# msal nudges towards response_mode=form_post; both modes are tested here on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended")
HUB_SCOPE = "api://kubearc-hub/.default"
PASSWORD = "correct horse battery"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@pytest.fixture
def clock() -> MovingClock:
    return MovingClock()


@pytest.fixture(autouse=True)
def _cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(directory, "SCRYPT_N", 2**10)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


_open_apps: list[msal.ClientApplication] = []


@pytest.fixture(autouse=True)
def _close_msal(start_hub: Any) -> Iterator[None]:
    yield
    while _open_apps:
        _open_apps.pop().http_client.close()


def make_user(hub: RunningHub, upn: str) -> str:
    async def go() -> str:
        async with hub.hub.sessions() as session:
            return (await directory.create_user(session, upn, PASSWORD)).id

    return hub.run(go())


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


class Issuer:
    """The hub's issuer endpoints, as a client (JSON) and as a browser (forms) use them."""

    def __init__(self, hub: RunningHub) -> None:
        self.hub = hub
        self.tenant = hub.hub.tenant_id
        self.http = hub.client()

    def devicecode(self, client_id: str = "kubearc-cli", scope: str = f"{HUB_SCOPE} offline_access openid"):
        return self.http.post(
            f"/{self.tenant}/oauth2/v2.0/devicecode", data={"client_id": client_id, "scope": scope}
        )

    def poll(self, device_code: str, client_id: str = "kubearc-cli") -> httpx.Response:
        return self.http.post(
            f"/{self.tenant}/oauth2/v2.0/token",
            data={"grant_type": DEVICE_GRANT, "client_id": client_id, "device_code": device_code},
        )

    def start(self) -> dict[str, Any]:
        response = self.devicecode()
        assert response.status_code == 200, response.text
        return dict(response.json())

    def enter_code(self, user_code: str) -> httpx.Response:
        page = self.http.get("/devicelogin")
        assert page.status_code == 200 and 'name="user_code"' in page.text
        return self.http.post("/devicelogin", data={"user_code": user_code})

    def answer(self, user_code: str, upn: str, password: str = PASSWORD, decision: str = "approve"):
        step = self.enter_code(user_code)
        assert step.status_code == 200, step.text
        assert 'name="password"' in step.text
        return self.http.post(
            "/devicelogin",
            data={"user_code": user_code, "username": upn, "password": password, "decision": decision},
        )


@pytest.fixture
def issuer(hub: RunningHub) -> Iterator[Issuer]:
    issuer = Issuer(hub)
    yield issuer
    issuer.http.close()


def error_of(response: httpx.Response) -> tuple[int, str, list[int]]:
    body = response.json()
    return response.status_code, body["error"], body["error_codes"]


def test_discovery_advertises_the_device_authorization_endpoint_and_pkce(issuer: Issuer) -> None:
    meta = issuer.http.get(f"/{issuer.tenant}/v2.0/.well-known/openid-configuration").json()
    base = f"{issuer.hub.url}/{issuer.tenant}/oauth2/v2.0"
    assert meta["device_authorization_endpoint"] == f"{base}/devicecode"
    assert meta["authorization_endpoint"] == f"{base}/authorize"
    assert {DEVICE_GRANT, "authorization_code"} <= set(meta["grant_types_supported"])
    assert meta["code_challenge_methods_supported"] == ["S256"]


def test_a_device_code_is_pending_until_its_user_approves_then_redeems_once(
    issuer: Issuer, clock: MovingClock
) -> None:
    oid = make_user(issuer.hub, "dana@kubearc.test")
    flow = issuer.start()
    assert re.fullmatch(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}", flow["user_code"])
    assert flow["verification_uri"] == f"{issuer.hub.url}/devicelogin"
    assert (flow["expires_in"], flow["interval"]) == (900, 5)
    assert flow["verification_uri"] in flow["message"] and flow["user_code"] in flow["message"]

    assert error_of(issuer.poll(flow["device_code"])) == (400, "authorization_pending", [70016])
    done = issuer.answer(flow["user_code"].lower().replace("-", " "), "dana@kubearc.test")  # as typed
    assert done.status_code == 200 and "You are signed in" in done.text, done.text
    clock.advance(seconds=5)

    tokens = issuer.poll(flow["device_code"])
    assert tokens.status_code == 200, tokens.text
    body = tokens.json()
    claims = _claims(body["access_token"])
    assert (claims["aud"], claims["oid"], claims["upn"], claims["azp"]) == (
        "api://kubearc-hub",
        oid,
        "dana@kubearc.test",
        "kubearc-cli",
    )
    assert body["refresh_token"] and _claims(body["id_token"])["aud"] == "kubearc-cli"
    with issuer.hub.client(body["access_token"]) as api:  # the hub itself accepts the token
        assert api.get(
            f"/subscriptions/{uuid.uuid4()}/providers/Microsoft.Kubernetes/connectedClusters"
        ).is_success

    clock.advance(seconds=5)
    assert error_of(issuer.poll(flow["device_code"])) == (400, "invalid_grant", [54005])
    assert issuer.enter_code(flow["user_code"]).status_code == 400  # an answered code is gone from the page


def test_polling_faster_than_the_interval_is_slow_down_and_the_interval_grows_by_5_seconds(
    issuer: Issuer, clock: MovingClock
) -> None:
    flow = issuer.start()
    code = flow["device_code"]
    assert error_of(issuer.poll(code))[1] == "authorization_pending"  # the first poll may come at once
    assert error_of(issuer.poll(code))[1] == "slow_down"  # the second one not: interval 5 s, now 10 s
    clock.advance(seconds=5)
    assert error_of(issuer.poll(code))[1] == "slow_down"  # 5 s is no longer enough: now 15 s
    clock.advance(seconds=15)
    assert error_of(issuer.poll(code))[1] == "authorization_pending"
    clock.advance(seconds=15)
    assert error_of(issuer.poll(code))[1] == "authorization_pending"


def test_an_unanswered_device_code_expires_for_the_client_and_on_the_page(
    issuer: Issuer, clock: MovingClock
) -> None:
    make_user(issuer.hub, "erin@kubearc.test")
    flow = issuer.start()
    clock.advance(seconds=901)
    assert error_of(issuer.poll(flow["device_code"])) == (400, "expired_token", [70019])
    refused = issuer.enter_code(flow["user_code"])
    assert refused.status_code == 400 and "expired" in refused.text


def test_a_sign_in_the_user_denies_is_access_denied(issuer: Issuer, clock: MovingClock) -> None:
    make_user(issuer.hub, "finn@kubearc.test")
    flow = issuer.start()
    denied = issuer.answer(flow["user_code"], "finn@kubearc.test", decision="deny")
    assert denied.status_code == 200 and "denied" in denied.text
    assert error_of(issuer.poll(flow["device_code"]))[1] == "access_denied"


def test_the_verification_page_wants_the_right_password_and_a_live_code(
    issuer: Issuer, clock: MovingClock
) -> None:
    make_user(issuer.hub, "gale@kubearc.test")
    flow = issuer.start()
    wrong = issuer.answer(flow["user_code"], "gale@kubearc.test", password="not it")
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    assert wrong.headers["x-frame-options"] == "DENY" and "no-store" in wrong.headers["cache-control"]
    unknown = issuer.enter_code("BBBB-BBBB")
    assert unknown.status_code == 400 and "not valid" in unknown.text
    hostile = issuer.http.get("/devicelogin", params={"code": '"><script>alert(1)</script>'})
    assert "<script>alert" not in hostile.text
    clock.advance(seconds=5)
    assert error_of(issuer.poll(flow["device_code"]))[1] == "authorization_pending"  # still waiting


def test_a_device_code_is_redeemed_only_by_the_client_it_was_given_to(issuer: Issuer) -> None:
    async def sp() -> tuple[str, str]:
        async with issuer.hub.hub.sessions() as session:
            _, app_id, secret = await directory.create_service_principal(session, "other app")
            return app_id, secret

    app_id, secret = issuer.hub.run(sp())
    flow = issuer.start()
    stolen = issuer.http.post(
        f"/{issuer.tenant}/oauth2/v2.0/token",
        data={
            "grant_type": DEVICE_GRANT,
            "client_id": app_id,
            "client_secret": secret,
            "device_code": flow["device_code"],
        },
    )
    assert error_of(stolen)[:2] == (400, "invalid_grant")
    assert error_of(issuer.poll("not-a-device-code"))[:2] == (400, "invalid_grant")
    bad_scope = issuer.devicecode(scope="not a scope/")
    assert bad_scope.status_code == 400 and bad_scope.json()["error"] == "invalid_scope"


def test_msal_device_flow_works_unmodified_against_the_local_issuer(start_hub: Any) -> None:
    hub = start_hub(device_code_interval=dt.timedelta(seconds=1))
    make_user(hub, "hana@kubearc.test")
    app = msal.PublicClientApplication("kubearc-cli", oidc_authority=hub.hub.issuer, verify=hub.ca)
    _open_apps.append(app)
    flow = app.initiate_device_flow(scopes=[HUB_SCOPE])
    assert flow["interval"] == 1 and "user_code" in flow, flow
    result: dict[str, Any] = {}
    poller = threading.Thread(target=lambda: result.update(app.acquire_token_by_device_flow(flow)))
    poller.start()
    person = Issuer(hub)
    try:
        assert person.answer(flow["user_code"], "hana@kubearc.test").status_code == 200
    finally:
        person.http.close()
    poller.join(30)
    assert not poller.is_alive() and "access_token" in result, result
    assert result["id_token_claims"]["preferred_username"] == "hana@kubearc.test"
    account = app.get_accounts(username="hana@kubearc.test")[0]
    again = app.acquire_token_silent([HUB_SCOPE], account=account, force_refresh=True)
    assert again and "access_token" in again  # the refresh token from the device flow works


# ---------------------------------------------------------------- authorization code with PKCE

REDIRECT = "http://localhost:8400"


def _sign_in(hub: RunningHub, auth_uri: str, upn: str, password: str = PASSWORD) -> httpx.Response:
    with hub.client() as browser:
        page = browser.get(auth_uri)
        assert page.status_code == 200, page.text
        action = re.search(r'<form method="post" action="([^"]+)"', page.text)
        assert action is not None
        target = html.unescape(action.group(1))
        return browser.post(target, data={"username": upn, "password": password})


def _query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def _posted(page: httpx.Response) -> tuple[str, dict[str, str]]:
    """What a browser posts for a form_post answer: the form's target and its hidden fields."""
    action = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert action is not None, page.text
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text))
    return html.unescape(action.group(1)), {k: html.unescape(v) for k, v in fields.items()}


@pytest.mark.parametrize("mode", ["query", "form_post"])
def test_msal_auth_code_flow_with_pkce_works_unmodified_through_the_sign_in_page(
    hub: RunningHub, mode: str
) -> None:
    oid = make_user(hub, "ines@kubearc.test")
    app = msal.PublicClientApplication("kubearc-cli", oidc_authority=hub.hub.issuer, verify=hub.ca)
    _open_apps.append(app)
    flow = app.initiate_auth_code_flow(
        scopes=[HUB_SCOPE],
        redirect_uri=REDIRECT,
        login_hint="ines@kubearc.test",
        response_mode=None if mode == "query" else mode,
    )
    assert "code_challenge=" in flow["auth_uri"]

    wrong = _sign_in(hub, flow["auth_uri"], "ines@kubearc.test", "nope")
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    back = _sign_in(hub, flow["auth_uri"], "ines@kubearc.test")
    if mode == "query":
        assert back.status_code == 302, back.text
        location = back.headers["location"]
        assert location.startswith(REDIRECT + "?")
        response = _query(location)
    else:
        assert back.status_code == 200 and "location" not in back.headers, back.text
        target, response = _posted(back)
        assert target == REDIRECT
        assert "form-action http://localhost:8400" in back.headers["content-security-policy"]
    assert response["state"] == flow["state"] and response["code"]

    result = app.acquire_token_by_auth_code_flow(flow, response)
    assert "access_token" in result, result
    assert _claims(result["access_token"])["oid"] == oid
    assert result["id_token_claims"]["nonce"]  # msal checked it against its own
    again = app.acquire_token_by_auth_code_flow(flow, response)  # a code is good once
    assert again.get("error") == "invalid_grant" and again["error_codes"] == [54005]
    account = app.get_accounts(username="ines@kubearc.test")[0]
    assert "access_token" in (
        app.acquire_token_silent([HUB_SCOPE], account=account, force_refresh=True) or {}
    )


def test_the_sign_in_page_never_redirects_to_an_unregistered_uri(hub: RunningHub) -> None:
    app = msal.PublicClientApplication("kubearc-cli", oidc_authority=hub.hub.issuer, verify=hub.ca)
    _open_apps.append(app)
    with hub.client() as browser:
        for redirect in (
            "https://evil.example/cb",
            "http://localhost:8400/other",
            "http://localhost.evil:80",
        ):
            flow = app.initiate_auth_code_flow(scopes=[HUB_SCOPE], redirect_uri=redirect)
            page = browser.get(flow["auth_uri"])
            assert page.status_code == 400 and "AADSTS50011" in page.text, redirect
            assert "location" not in page.headers
        unknown = browser.get(
            f"/{hub.hub.tenant_id}/oauth2/v2.0/authorize",
            params={"client_id": "some-app", "redirect_uri": REDIRECT, "response_type": "code"},
        )
        assert unknown.status_code == 400 and "AADSTS50011" in unknown.text
        no_pkce = browser.get(
            f"/{hub.hub.tenant_id}/oauth2/v2.0/authorize",
            params={
                "client_id": "kubearc-cli",
                "redirect_uri": REDIRECT,
                "response_type": "code",
                "state": "s1",
            },
        )
        assert no_pkce.status_code == 302
        answer = _query(no_pkce.headers["location"])
        assert (answer["error"], answer["state"]) == ("invalid_request", "s1")
        assert "PKCE" in answer["error_description"]


def test_a_code_needs_its_verifier_and_its_redirect_uri(hub: RunningHub) -> None:
    make_user(hub, "jules@kubearc.test")
    app = msal.PublicClientApplication("kubearc-cli", oidc_authority=hub.hub.issuer, verify=hub.ca)
    _open_apps.append(app)
    token_url = f"/{hub.hub.tenant_id}/oauth2/v2.0/token"
    with hub.client() as client:
        for field, value, code in (
            ("code_verifier", "x" * 43, 501481),  # a verifier that is not the one of the challenge
            ("redirect_uri", "http://localhost:9999", 50148),  # another port than the request's
        ):
            flow = app.initiate_auth_code_flow(scopes=[HUB_SCOPE], redirect_uri=REDIRECT)
            back = _sign_in(hub, flow["auth_uri"], "jules@kubearc.test")
            form = {
                "grant_type": "authorization_code",
                "client_id": "kubearc-cli",
                "code": _query(back.headers["location"])["code"],
                "redirect_uri": REDIRECT,
                "code_verifier": flow["code_verifier"],
                field: value,
            }
            refused = client.post(token_url, data=form)
            assert error_of(refused) == (400, "invalid_grant", [code]), refused.text
