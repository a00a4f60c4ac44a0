"""The local issuer's OpenID Connect endpoints, shaped like Entra ID's v2 endpoints.

Clients use msal unmodified (`oidc_authority=<issuer>`), so discovery, token
responses and errors follow what msal reads from Entra: `client_info`, ID tokens,
`error_codes` with AADSTS numbers. Grants: `client_credentials` (service
principals), `password` (users, through the built-in public client `kubearc-cli`
or a service principal), `refresh_token`, the device authorization grant
(RFC 8628: `POST .../devicecode`, the verification page `/devicelogin`, then
`urn:ietf:params:oauth:grant-type:device_code` at the token endpoint) and
`authorization_code` with PKCE (the sign-in page at `.../authorize`, redirect
URIs checked against the client's). Pending grants live in `grants.py`, the
HTML in `pages.py`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from hub import directory
from hub.context import Hub, hub_of
from hub.errors import HubError
from hub.issuer import grants, pages, tokens
from hub.store.models import AuthorizationGrant, DirectoryObject

GRAPH_RESOURCE = "https://graph.microsoft.com"
OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
GRANTS = ("authorization_code", "client_credentials", DEVICE_CODE_GRANT, "password", "refresh_token")
VERIFICATION_PATH = "/devicelogin"
MAX_FORM = 64 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(HubError):
    """An Entra-shaped token endpoint error: OAuth `error`, AADSTS number, description."""

    def __init__(self, error: str, code: int, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.code = code
        self.description = description

    @property
    def status(self) -> int:
        return 401 if self.error == "invalid_client" else 400


def _error_response(hub: Hub | None, request: Request, exc: OAuthError) -> JSONResponse:
    now = hub.now() if hub else dt.datetime.now(dt.UTC)
    stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
    trace = str(uuid.uuid4())
    correlation = request.headers.get("client-request-id") or str(uuid.uuid4())
    description = (
        f"AADSTS{exc.code}: {exc.description}\r\nTrace ID: {trace}\r\n"
        f"Correlation ID: {correlation}\r\nTimestamp: {stamp}"
    )
    body = {
        "error": exc.error,
        "error_description": description,
        "error_codes": [exc.code],
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": correlation,
    }
    return JSONResponse(body, status_code=exc.status, headers=NO_STORE)


def _missing(name: str) -> OAuthError:
    return OAuthError(
        "invalid_request", 900144, f"The request body must contain the following parameter: '{name}'."
    )


def _check_tenant(hub: Hub, tenant: str) -> None:
    if not hub.config.local_issuer:
        raise OAuthError(
            "invalid_request", 90002, "This hub does not run a local issuer (local_issuer is off)."
        )
    if tenant.lower() != hub.tenant_id.lower():
        raise OAuthError(
            "invalid_request",
            90002,
            f"Tenant '{tenant}' not found. This hub's local issuer serves tenant '{hub.tenant_id}' only "
            f"(authority {hub.issuer}).",
        )


# ---------------------------------------------------------------- discovery


def _endpoints(hub: Hub) -> dict[str, str]:
    base = f"{hub.config.url}/{hub.tenant_id}"
    return {
        "token_endpoint": f"{base}/oauth2/v2.0/token",
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
        "jwks_uri": f"{base}/discovery/v2.0/keys",
    }


async def openid_configuration(request: Request) -> Response:
    hub = hub_of(request)
    try:
        _check_tenant(hub, request.path_params["tenant"])
    except OAuthError as exc:
        return _error_response(hub, request, exc)
    doc: dict[str, Any] = {
        "issuer": hub.issuer,
        **_endpoints(hub),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "grant_types_supported": list(GRANTS),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "form_post"],
        "code_challenge_methods_supported": ["S256"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": sorted(OIDC_SCOPES),
        "claims_supported": [
            "sub",
            "iss",
            "aud",
            "exp",
            "iat",
            "nbf",
            "oid",
            "tid",
            "name",
            "preferred_username",
            "upn",
            "groups",
            "ver",
        ],
        "request_uri_parameter_supported": False,
        "tenant_region_scope": None,
        "cloud_instance_name": urlsplit(hub.config.url).hostname,
        "cloud_graph_host_name": urlsplit(hub.config.url).netloc,
        "msgraph_host": urlsplit(hub.config.url).netloc,
        "kubearc_graph_endpoint": f"{hub.config.url}/v1.0",
    }
    return JSONResponse(doc)


async def jwks(request: Request) -> Response:
    hub = hub_of(request)
    try:
        _check_tenant(hub, request.path_params["tenant"])
    except OAuthError as exc:
        return _error_response(hub, request, exc)
    return JSONResponse({"keys": [hub.issuer_jwk()]})


async def user_realm(request: Request) -> Response:
    """msal asks before a password grant whether the account is federated: here, never."""
    hub = hub_of(request)
    username = request.path_params["username"]
    return JSONResponse(
        {
            "ver": "1.0",
            "account_type": "Managed",
            "domain_name": username.rsplit("@", 1)[-1].lower(),
            "cloud_instance_name": urlsplit(hub.config.url).hostname,
            "cloud_audience_urn": "urn:federation:MicrosoftOnline",
        }
    )


# ---------------------------------------------------------------- token endpoint


async def _read_form(request: Request) -> dict[str, str]:
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise OAuthError(
            "invalid_request", 900144, "The token endpoint takes an application/x-www-form-urlencoded body."
        )
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise OAuthError("invalid_request", 90014, f"The request body exceeds {MAX_FORM} bytes.")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", 90014, "The request body is not valid form encoding.") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise OAuthError("invalid_request", 90014, f"The parameter '{key}' was given more than once.")
        form[key] = value
    return form


def _required(form: dict[str, str], name: str) -> str:
    value = form.get(name, "")
    if not value:
        raise _missing(name)
    return value


@dataclass(frozen=True)
class Client:
    client_id: str
    sp: DirectoryObject | None  # None for the built-in public client

    @property
    def public(self) -> bool:
        return self.sp is None


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, sep, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError(
            "invalid_client", 7000216, "The Authorization header is not valid Basic credentials."
        ) from None
    if not sep:
        raise OAuthError(
            "invalid_client", 7000216, "The Authorization header is not valid Basic credentials."
        )
    return unquote_plus(client_id), unquote_plus(secret)


async def _authenticate_client(
    hub: Hub, session: AsyncSession, request: Request, form: dict[str, str]
) -> Client:
    basic = _basic_credentials(request)
    client_id = form.get("client_id") or (basic[0] if basic else "")
    secret = form.get("client_secret") or (basic[1] if basic else "")
    if basic and form.get("client_id") and form["client_id"] != basic[0]:
        raise OAuthError(
            "invalid_request", 90014, "client_id in the body and in the Authorization header differ."
        )
    if not client_id:
        raise _missing("client_id")
    if "client_assertion" in form:
        raise OAuthError(
            "invalid_client",
            700027,
            "Client assertions are not supported by this issuer; use a client secret.",
        )
    if client_id == tokens.CLI_CLIENT_ID:
        if secret:
            raise OAuthError(
                "invalid_client",
                700025,
                "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
            )
        return Client(client_id, None)
    if not secret:
        raise OAuthError(
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )
    try:
        sp = await directory.check_client_secret(session, client_id, secret)
    except directory.UnknownPrincipal:
        raise OAuthError(
            "invalid_client",
            700016,
            f"Application with identifier '{client_id}' was not found in the directory '{hub.tenant_id}'.",
        ) from None
    except directory.BadCredential:
        raise OAuthError(
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client "
            f"secret value for app '{client_id}'.",
        ) from None
    return Client(sp.login or client_id, sp)


@dataclass(frozen=True)
class ScopeRequest:
    resource: str
    permissions: list[str]  # for `scp`; `.default` stands for user_impersonation
    requested: list[str]  # echoed back as the response's `scope` (msal keys its cache on it)

    def has(self, scope: str) -> bool:
        return scope in self.requested


def _valid_resource(resource: str) -> bool:
    if directory.is_guid(resource):
        return True
    scheme, sep, rest = resource.partition("://")
    return bool(scheme and sep and rest.strip("/"))


def _parse_scopes(raw: str, default_resource: str, *, app: bool) -> ScopeRequest:
    requested = [s for s in raw.split(" ") if s]
    resources: dict[str, str] = {}
    permissions: list[str] = []
    for scope in requested:
        if scope in OIDC_SCOPES:
            continue
        resource, slash, permission = scope.rpartition("/")
        if not slash:
            resource, permission = GRAPH_RESOURCE, scope  # Entra reads bare scopes as Microsoft Graph's
        if not permission or not _valid_resource(resource):
            raise OAuthError(
                "invalid_scope",
                70011,
                f"The provided value for the input parameter 'scope' "
                f"is not valid. The scope {scope} is not valid.",
            )
        resources.setdefault(resource.lower(), resource)
        permissions.append(permission)
    if len(resources) > 1:
        raise OAuthError(
            "invalid_scope",
            28000,
            "Provided value for the input parameter scope is not valid because it contains more than one "
            f"resource. Scope {' '.join(requested)} is not valid.",
        )
    if app and (len(requested) != 1 or permissions != [".default"]):
        raise OAuthError(
            "invalid_scope",
            1002012,
            f"The provided value for scope {' '.join(requested)} is not valid. Client credential flows must "
            "have a scope value with /.default suffixed to the resource identifier (application ID URI).",
        )
    resource = next(iter(resources.values()), default_resource)
    scp = [p for p in permissions if p != ".default"] or ["user_impersonation"]
    return ScopeRequest(resource, scp, requested or [f"{default_resource}/.default"])


def _default_resource(hub: Hub) -> str:
    return hub.config.audiences[0]


async def _client_credentials(
    hub: Hub, session: AsyncSession, request: Request, form: dict[str, str]
) -> dict:
    client = await _authenticate_client(hub, session, request, form)
    if client.sp is None:
        raise OAuthError(
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )
    scopes = _parse_scopes(_required(form, "scope"), _default_resource(hub), app=True)
    groups = await directory.member_groups(session, client.sp.id)
    token, ttl = tokens.issue_access_token(
        hub,
        oid=client.sp.id,
        audience=scopes.resource,
        kind="app",
        client_id=client.client_id,
        name=client.sp.display_name,
        groups=groups,
    )
    return {
        "token_type": "Bearer",
        "expires_in": ttl,
        "ext_expires_in": ttl,
        "access_token": token,
        "scope": " ".join(scopes.requested),
    }


async def _user_tokens(
    hub: Hub,
    session: AsyncSession,
    user: DirectoryObject,
    client: Client,
    scopes: ScopeRequest,
    refresh: bool,
    nonce: str | None = None,
) -> dict:
    upn = user.login or user.id
    groups = await directory.member_groups(session, user.id)
    token, ttl = tokens.issue_access_token(
        hub,
        oid=user.id,
        audience=scopes.resource,
        kind="user",
        client_id=client.client_id,
        upn=upn,
        name=user.display_name,
        groups=groups,
        scopes=scopes.permissions,
    )
    body: dict[str, Any] = {
        "token_type": "Bearer",
        "scope": " ".join(scopes.requested),
        "expires_in": ttl,
        "ext_expires_in": ttl,
        "access_token": token,
        "client_info": tokens.client_info(hub, user.id),
    }
    if refresh or scopes.has("offline_access"):
        body["refresh_token"] = tokens.issue_refresh_token(
            hub,
            oid=user.id,
            client_id=client.client_id,
            scopes=scopes.requested,
            credential=directory.credential_fingerprint(user),
        )
    if scopes.has("openid"):
        body["id_token"] = tokens.issue_id_token(
            hub, oid=user.id, client_id=client.client_id, upn=upn, name=user.display_name, nonce=nonce
        )
    return body


async def _password(hub: Hub, session: AsyncSession, request: Request, form: dict[str, str]) -> dict:
    username = _required(form, "username")
    password = _required(form, "password")
    client = await _authenticate_client(hub, session, request, form)
    scopes = _parse_scopes(form.get("scope", ""), _default_resource(hub), app=False)
    try:
        user = await directory.check_user_password(session, username, password)
    except directory.UnknownPrincipal:
        raise OAuthError(
            "invalid_grant",
            50034,
            f"The user account {{EUII Hidden}} does not exist in the {hub.tenant_id} directory. To sign into "
            "this application, the account must be added to the directory.",
        ) from None
    except directory.BadCredential:
        raise OAuthError(
            "invalid_grant", 50126, "Error validating credentials due to invalid username or password."
        ) from None
    return await _user_tokens(hub, session, user, client, scopes, refresh=False)


async def _refresh(hub: Hub, session: AsyncSession, request: Request, form: dict[str, str]) -> dict:
    raw = _required(form, "refresh_token")
    client = await _authenticate_client(hub, session, request, form)
    try:
        grant = tokens.read_refresh_token(hub, raw)
    except tokens.RefreshTokenExpired:
        raise OAuthError(
            "invalid_grant", 700082, "The refresh token has expired. Sign in again (kubearc login)."
        ) from None
    except tokens.RefreshTokenError:
        raise OAuthError(
            "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid."
        ) from None
    if grant.client_id != client.client_id:
        raise OAuthError(
            "invalid_grant",
            70000,
            "Provided grant is invalid or malformed: the refresh token was issued to a different client.",
        )
    user = await directory.get_object(session, grant.oid, directory.USER)
    if user is None or directory.credential_fingerprint(user) != grant.credential:
        raise OAuthError(
            "invalid_grant",
            50173,
            "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user "
            "might have changed or reset their password, or been deleted.",
        )
    scopes = _parse_scopes(form.get("scope") or " ".join(grant.scopes), _default_resource(hub), app=False)
    return await _user_tokens(hub, session, user, client, scopes, refresh=True)


# AADSTS numbers for what a pending grant answers (RFC 8628 section 3.5, RFC 6749 section 5.2).
_GRANT_ERRORS: dict[type[grants.GrantError], tuple[int, str]] = {
    grants.AuthorizationPending: (
        70016,
        "The provided request has not yet been authorized by the user. The user must input their code.",
    ),
    grants.SlowDown: (70016, "Polling too fast; wait the interval, now 5 seconds longer, between polls."),
    grants.AccessDenied: (70020, "The user declined the sign-in on the verification page."),
    grants.ExpiredToken: (70019, "Verification code expired. Start the sign-in again."),
    grants.AlreadyRedeemed: (54005, "The code was already redeemed. Start the sign-in again."),
    grants.RedirectMismatch: (
        50148,
        "The redirect_uri does not match the one of the authorization request.",
    ),
    grants.PkceMismatch: (501481, "The code_verifier does not match the code_challenge of the request."),
}


def _grant_error(exc: grants.GrantError) -> OAuthError:
    code, text = _GRANT_ERRORS.get(type(exc), (70000, f"Provided grant is invalid or malformed: {exc}."))
    return OAuthError(exc.error, code, text)


async def _approved_user(hub: Hub, session: AsyncSession, grant: AuthorizationGrant) -> DirectoryObject:
    """The user who approved `grant`, unless their credential changed since (or they are gone)."""
    user = await directory.get_object(session, grant.user_id or "", directory.USER)
    if user is None or directory.credential_fingerprint(user) != grant.credential:
        raise OAuthError(
            "invalid_grant",
            50173,
            "The provided grant has expired due to it being revoked: the user changed their password "
            "or was deleted. Sign in again.",
        )
    return user


async def _device_code(hub: Hub, session: AsyncSession, request: Request, form: dict[str, str]) -> dict:
    device_code = _required(form, "device_code")
    client = await _authenticate_client(hub, session, request, form)
    try:
        grant = await grants.poll_device_code(session, hub.now(), device_code, client.client_id)
    except grants.GrantError as exc:
        raise _grant_error(exc) from None
    user = await _approved_user(hub, session, grant)
    scopes = _parse_scopes(" ".join(grant.scopes), _default_resource(hub), app=False)
    return await _user_tokens(hub, session, user, client, scopes, refresh=False)


async def _authorization_code(
    hub: Hub, session: AsyncSession, request: Request, form: dict[str, str]
) -> dict:
    code = _required(form, "code")
    redirect_uri = _required(form, "redirect_uri")
    verifier = _required(form, "code_verifier")  # PKCE is not optional here
    client = await _authenticate_client(hub, session, request, form)
    try:
        grant = await grants.redeem_code(
            session,
            hub.now(),
            code=code,
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            code_verifier=verifier,
        )
    except grants.GrantError as exc:
        raise _grant_error(exc) from None
    user = await _approved_user(hub, session, grant)
    scopes = _parse_scopes(" ".join(grant.scopes), _default_resource(hub), app=False)
    return await _user_tokens(hub, session, user, client, scopes, refresh=False, nonce=grant.nonce)


_HANDLERS = {
    "authorization_code": _authorization_code,
    "client_credentials": _client_credentials,
    DEVICE_CODE_GRANT: _device_code,
    "password": _password,
    "refresh_token": _refresh,
}


async def token(request: Request) -> Response:
    hub = hub_of(request)
    try:
        _check_tenant(hub, request.path_params["tenant"])
        form = await _read_form(request)
        grant_type = _required(form, "grant_type")
        handler = _HANDLERS.get(grant_type)
        if handler is None:
            raise OAuthError(
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant_type}'. This issuer supports "
                f"{', '.join(GRANTS)}.",
            )
        async with hub.sessions() as session:
            body = await handler(hub, session, request, form)
    except OAuthError as exc:
        return _error_response(hub, request, exc)
    return JSONResponse(body, headers=NO_STORE)


# ---------------------------------------------------------------- device authorization (RFC 8628)


async def devicecode(request: Request) -> Response:
    """`POST /{tenant}/oauth2/v2.0/devicecode`: a device code for the client, a user code for the person."""
    hub = hub_of(request)
    try:
        _check_tenant(hub, request.path_params["tenant"])
        form = await _read_form(request)
        async with hub.sessions() as session:
            client = await _authenticate_client(hub, session, request, form)
            scopes = _parse_scopes(form.get("scope", ""), _default_resource(hub), app=False)
            ttl = hub.config.device_code_ttl
            interval = max(1, int(hub.config.device_code_interval.total_seconds()))
            device_code, user_code = await grants.start_device_flow(
                session,
                hub.now(),
                client_id=client.client_id,
                scopes=scopes.requested,
                ttl=ttl,
                interval=interval,
            )
    except OAuthError as exc:
        return _error_response(hub, request, exc)
    uri = f"{hub.config.url}{VERIFICATION_PATH}"
    shown = grants.display_user_code(user_code)
    return JSONResponse(
        {
            "user_code": shown,
            "device_code": device_code,
            "verification_uri": uri,
            "expires_in": int(ttl.total_seconds()),
            "interval": interval,
            "message": f"To sign in, use a web browser to open the page {uri} and enter the code {shown} "
            "to authenticate.",
        },
        headers=NO_STORE,
    )


def _resource_of(scopes: list[str]) -> str:
    """The resource a scope list asks for, as the pages show it."""
    for scope in scopes:
        if scope not in OIDC_SCOPES:
            return scope.rpartition("/")[0] or GRAPH_RESOURCE
    return "your account"


async def _page_form(request: Request) -> dict[str, str] | None:
    try:
        return await _read_form(request)
    except OAuthError:
        return None


async def devicelogin(request: Request) -> Response:
    """The verification page: the user enters the code, signs in (local directory) and approves."""
    hub = hub_of(request)
    action = VERIFICATION_PATH
    if not hub.config.local_issuer:
        return pages.error("Not available", "This hub does not run a local issuer.", 404)
    if request.method == "GET":
        return pages.enter_code(action, code=request.query_params.get("code", "")[:32])
    form = await _page_form(request)
    if form is None:
        return pages.enter_code(action, "The form could not be read; enter the code again.", 400)
    typed = form.get("user_code", "")
    async with hub.sessions() as session:
        grant = await grants.pending_by_user_code(session, hub.now(), typed)
        if grant is None:
            return pages.enter_code(
                action,
                "That code is not valid or has expired. Check it, or start the sign-in on your device again.",
                400,
                typed[:32],
            )
        shown, resource = grants.display_user_code(grant.user_code or ""), _resource_of(grant.scopes)
        if "username" not in form:  # the code step: show what is asked, then the sign-in form
            return pages.approve_device(action, shown, grant.client_id, resource)
        username, password = form.get("username", ""), form.get("password", "")
        try:
            user = await directory.check_user_password(session, username, password)
        except directory.DirectoryError:
            return pages.approve_device(
                action,
                shown,
                grant.client_id,
                resource,
                "Wrong user name or password; try again.",
                401,
                username[:256],
            )
        approve = form.get("decision") == "approve"
        credential = directory.credential_fingerprint(user)
        if not await grants.decide(session, grant, user, credential, approve):
            return pages.enter_code(action, "This sign-in was already answered.", 409)
    return pages.device_done(approve, grant.client_id)


# ---------------------------------------------------------------- authorization code with PKCE


def _registered_redirects(client_id: str) -> tuple[str, ...]:
    return tokens.CLI_REDIRECT_URIS if client_id == tokens.CLI_CLIENT_ID else ()


def _redirect(redirect_uri: str, params: dict[str, str], mode: str = "query") -> Response:
    if mode == "form_post":
        return pages.form_post(redirect_uri, params)
    sep = "&" if "?" in redirect_uri else "?"
    location = f"{redirect_uri}{sep}{urlencode(params)}"
    return Response(status_code=302, headers={"Location": location, **pages.HEADERS})


async def authorize(request: Request) -> Response:
    """The sign-in page of the authorization code flow (RFC 6749 section 4.1, PKCE required).

    A bad client or redirect URI is shown on the page and never redirected to
    (RFC 6749 section 4.1.2.1); other errors go back to the redirect URI with `state`.
    """
    hub = hub_of(request)
    query = request.query_params
    try:
        _check_tenant(hub, request.path_params["tenant"])
    except OAuthError as exc:
        return pages.error("Sign-in failed", exc.description)
    client_id, redirect_uri = query.get("client_id", ""), query.get("redirect_uri", "")
    if not client_id:
        return pages.error("Sign-in failed", "The request has no client_id.")
    if not redirect_uri or not grants.redirect_allowed(_registered_redirects(client_id), redirect_uri):
        return pages.error(
            "Sign-in failed",
            f"AADSTS50011: The redirect URI '{redirect_uri}' does not match the redirect URIs registered "
            f"for the application '{client_id}'.",
        )
    state = {"state": query["state"]} if "state" in query else {}
    mode = query.get("response_mode", "query")

    def refuse(error: str, description: str) -> Response:
        answer = {"error": error, "error_description": description, **state}
        return _redirect(redirect_uri, answer, mode if mode == "form_post" else "query")

    if query.get("response_type") != "code":
        return refuse("unsupported_response_type", "This issuer supports response_type=code only.")
    if mode not in ("query", "form_post"):
        return refuse("invalid_request", "This issuer supports response_mode=query or form_post.")
    challenge = query.get("code_challenge", "")
    if query.get("code_challenge_method") != "S256" or not grants.valid_challenge(challenge):
        return refuse("invalid_request", "PKCE is required: send a code_challenge with method S256.")
    try:
        scopes = _parse_scopes(query.get("scope", ""), _default_resource(hub), app=False)
    except OAuthError as exc:
        return refuse(exc.error, exc.description)
    action = f"{request.url.path}?{request.url.query}"  # the form posts back with the same parameters
    resource = _resource_of(scopes.requested)
    if request.method == "GET":
        return pages.sign_in(action, client_id, resource, username=query.get("login_hint", "")[:256])
    form = await _page_form(request) or {}
    username, password = form.get("username", ""), form.get("password", "")
    async with hub.sessions() as session:
        try:
            user = await directory.check_user_password(session, username, password)
        except directory.DirectoryError:
            return pages.sign_in(
                action, client_id, resource, "Wrong user name or password; try again.", 401, username[:256]
            )
        code = await grants.issue_code(
            session,
            hub.now(),
            ttl=hub.config.authorization_code_ttl,
            client_id=client_id,
            user=user,
            credential=directory.credential_fingerprint(user),
            scopes=scopes.requested,
            redirect_uri=redirect_uri,
            code_challenge=challenge,
            nonce=query.get("nonce") or None,
        )
    params = {"code": code, **state}
    if query.get("client_info") == "1":
        params["client_info"] = tokens.client_info(hub, user.id)
    return _redirect(redirect_uri, params, mode)


routes: list[BaseRoute] = [
    Route("/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration, methods=["GET"]),
    Route("/{tenant}/discovery/v2.0/keys", jwks, methods=["GET"]),
    Route("/{tenant}/oauth2/v2.0/token", token, methods=["POST"]),
    Route("/{tenant}/oauth2/v2.0/authorize", authorize, methods=["GET", "POST"]),
    Route("/{tenant}/oauth2/v2.0/devicecode", devicecode, methods=["POST"]),
    Route(VERIFICATION_PATH, devicelogin, methods=["GET", "POST"]),
    Route("/common/userrealm/{username}", user_realm, methods=["GET"]),
]
