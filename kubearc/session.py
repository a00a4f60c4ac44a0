"""The user side of talking to the hub: who we are signed in as, and an authenticated client.

`kubearc login` saves the hub URL, its CA file and how to get tokens (the local
issuer through msal's `oidc_authority`, or an Entra tenant) in the client config,
and leaves msal's token cache in `<config dir>/msal_token_cache.json` (mode 0600).
Every later command gets tokens silently from that cache; msal refreshes them
with the refresh token (users) or the saved client secret (service principals).
"""

from __future__ import annotations

import json
import os
import ssl
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import msal

from foundation.msalhttp import issuer_http_client
from foundation.settings import client_config_dir, load_client_config, save_client_config
from foundation.wire import DISCOVERY_PATH, ENTRA_AUTHORITY, Discovery, WireError

CACHE_FILE = "msal_token_cache.json"
SECRET_FILE = "service_principal.json"
SECRET_ENV = "KUBEARC_CLIENT_SECRET"
# Azure CLI's public client id: preauthorized in every Entra tenant, as kubelogin uses it.
ENTRA_CLI_CLIENT_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
USER, SERVICE_PRINCIPAL = "user", "servicePrincipal"
# How `kubearc get-token` signs in when the cache has nothing usable (kubelogin's `--login` names).
DEVICE_CODE, ROPC, SPN = "devicecode", "ropc", "spn"
LOGINS = (DEVICE_CODE, ROPC, SPN)
_KEYS = ("hub_url", "ca_file", "auth_mode", "authority", "oidc_authority", "client_id", "scope", "username")


class SessionError(RuntimeError):
    """No usable sign-in; the message tells the user what to run."""


@dataclass(frozen=True)
class ClientSettings:
    """What `kubearc login` saved: the hub and how to get tokens for it."""

    hub_url: str
    ca_file: str | None
    auth_mode: str
    authority: str
    oidc_authority: bool  # True: the hub's local issuer (generic OIDC); False: an Entra tenant
    client_id: str
    scope: str
    username: str | None = None

    @classmethod
    def load(cls) -> ClientSettings:
        try:
            saved = load_client_config()
        except ValueError as exc:  # garbage in the saved session: signing in again rewrites it
            raise SessionError(f"{exc}: sign in again with `kubearc login --hub URL`") from None
        if not saved.get("hub_url") or not saved.get("authority"):
            raise SessionError("not signed in to a hub: run `kubearc login --hub URL`")
        return cls(
            hub_url=saved["hub_url"],
            ca_file=saved.get("ca_file") or None,
            auth_mode=saved.get("auth_mode", USER),
            authority=saved["authority"],
            oidc_authority=saved.get("oidc_authority", "true") == "true",
            client_id=saved.get("client_id", ""),
            scope=saved.get("scope", ""),
            username=saved.get("username") or None,
        )

    def save(self) -> Path:
        try:
            values = {k: v for k, v in load_client_config().items() if k not in _KEYS}
        except ValueError:
            values = {}
        values.update(
            hub_url=self.hub_url,
            auth_mode=self.auth_mode,
            authority=self.authority,
            oidc_authority="true" if self.oidc_authority else "false",
            client_id=self.client_id,
            scope=self.scope,
        )
        if self.ca_file:
            values["ca_file"] = self.ca_file
        if self.username:
            values["username"] = self.username
        return save_client_config(values)

    @property
    def msal_verify(self) -> str | bool:
        """msal talks to the hub's issuer (trust the hub CA) or to Entra (trust the system roots)."""
        return self.ca_file if self.oidc_authority and self.ca_file else True


def ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """TLS settings for the hub: its CA file when it has its own, the system roots otherwise."""
    if ca_file is None:
        try:
            ca_file = ClientSettings.load().ca_file
        except SessionError:
            ca_file = None
    return ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()


def _write_private(path: Path, text: str) -> None:
    """Atomically replace `path` with a file only its owner can read."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def cache_path() -> Path:
    return client_config_dir() / CACHE_FILE


def load_cache() -> msal.SerializableTokenCache:
    """msal's token cache as `kubearc login` left it; one that is unreadable, not JSON or not shaped
    like msal's (kinds of credentials, each a mapping of entries) is empty: it only means signing in
    again. (An entry msal cannot use is `Session.access_token`'s to report.)"""
    cache = msal.SerializableTokenCache()
    try:
        text = cache_path().read_text()
        doc = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return cache
    if isinstance(doc, dict) and all(
        isinstance(kind, dict) and all(isinstance(entry, dict) for entry in kind.values())
        for kind in doc.values()
    ):
        cache.deserialize(text)
    return cache


def save_cache(cache: msal.SerializableTokenCache, force: bool = False) -> None:
    if force or cache.has_state_changed:
        _write_private(cache_path(), cache.serialize())


def save_client_secret(client_id: str, secret: str) -> None:
    _write_private(client_config_dir() / SECRET_FILE, json.dumps({"clientId": client_id, "secret": secret}))


def forget_client_secret() -> None:
    (client_config_dir() / SECRET_FILE).unlink(missing_ok=True)


def _client_secret(client_id: str) -> str:
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV]
    path = client_config_dir() / SECRET_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    if saved.get("clientId") != client_id or not saved.get("secret"):
        raise SessionError(
            f"no client secret for service principal {client_id}: set ${SECRET_ENV} or run "
            "`kubearc login --service-principal` again"
        )
    return str(saved["secret"])


def msal_app(settings: ClientSettings, cache: msal.TokenCache, client_secret: str | None = None) -> Any:
    """An msal application for the saved authority; msal itself is used unmodified."""
    where: dict[str, Any] = (
        {"oidc_authority": settings.authority}
        if settings.oidc_authority
        else {"authority": settings.authority}
    )
    where["http_client"] = issuer_http_client(settings.msal_verify, settings.authority)
    try:
        if settings.auth_mode == SERVICE_PRINCIPAL:
            secret = client_secret or _client_secret(settings.client_id)
            return msal.ConfidentialClientApplication(
                settings.client_id,
                client_credential=secret,
                token_cache=cache,
                **where,
            )
        return msal.PublicClientApplication(settings.client_id, token_cache=cache, **where)
    except ValueError as exc:
        raise SessionError(f"cannot use the issuer {settings.authority}: {exc}") from None
    except OSError as exc:  # requests' connection and TLS errors are OSErrors
        raise SessionError(f"cannot reach the issuer {settings.authority}: {exc}") from None


def describe_error(result: dict[str, Any] | None) -> str:
    """The first line of an Entra-style error (never a token)."""
    if not result:
        return "no cached sign-in"
    text = str(result.get("error_description") or result.get("error") or "unknown error")
    return text.splitlines()[0]


def discover(hub_url: str, ca_file: str | None) -> Discovery:
    """The hub's discovery document: issuer, tenant, audience, CLI client id, relay."""
    url = f"{hub_url}{DISCOVERY_PATH}"
    try:
        with httpx.Client(verify=ssl_context(ca_file) if ca_file else True, timeout=15) as client:
            response = client.get(url)
            response.raise_for_status()
            return Discovery.from_json(response.json())
    except httpx.HTTPStatusError as exc:
        raise SessionError(
            f"{url} answered {exc.response.status_code}: is {hub_url} a kubearc hub?"
        ) from None
    except WireError as exc:
        raise SessionError(f"{url} did not return a kubearc configuration: {exc}") from None
    except (httpx.HTTPError, ValueError, OSError) as exc:
        raise SessionError(f"cannot reach the hub at {hub_url}: {exc}") from None


def login_target(hub_url: str | None, ca_file: Path | None) -> tuple[str, str | None]:
    """The hub to sign in to and its CA file: as given, or else those of the previous sign-in."""
    try:
        previous: ClientSettings | None = ClientSettings.load()
    except SessionError:
        previous = None
    hub = (hub_url or (previous.hub_url if previous else "")).rstrip("/")
    if not hub:
        raise SessionError("--hub is required (no hub signed in before)")
    if not hub.startswith("https://"):
        raise SessionError(f"hub URL must start with https:// (got {hub!r})")
    ca = (
        str(ca_file.resolve())
        if ca_file
        else (previous.ca_file if previous and previous.hub_url == hub else None)
    )
    if ca and not Path(ca).is_file():
        raise SessionError(f"CA file {ca} does not exist")
    return hub, ca


def authority_for(config: Discovery, hub_url: str, tenant: str | None) -> tuple[str, bool]:
    """Where to sign in: (authority, whether it is the hub's local issuer rather than Entra)."""
    if tenant:
        return f"{ENTRA_AUTHORITY}/{tenant}", False
    if config.issuer:
        return config.issuer, True
    raise SessionError(f"{hub_url} runs no local issuer: sign in with --tenant <Entra tenant id>")


def sign_in_service_principal(settings: ClientSettings, secret: str) -> dict[str, Any]:
    """Get a first token with the client secret; on success save the session, cache and secret."""
    cache = msal.SerializableTokenCache()  # a new sign-in replaces the previous one
    app = msal_app(settings, cache, client_secret=secret)
    try:
        result = app.acquire_token_for_client([settings.scope])
    except OSError as exc:
        raise SessionError(f"cannot reach the issuer {settings.authority}: {exc}") from None
    finally:
        app.http_client.close()
    if "access_token" not in result:
        raise SessionError(f"sign-in failed: {describe_error(result)}")
    save_cache(cache, force=True)
    save_client_secret(settings.client_id, secret)
    settings.save()
    return dict(result)


def sign_in_user(
    settings: ClientSettings,
    username: str | None,
    password: str | None,
    show_device_code: Callable[[str], None] = print,
) -> ClientSettings:
    """Password grant (or, for Entra, device code flow); on success save the session and cache."""
    cache = msal.SerializableTokenCache()
    app = msal_app(settings, cache)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # msal discourages ROPC for public clients
            if username and password:
                result = app.acquire_token_by_username_password(username, password, scopes=[settings.scope])
            else:
                flow = app.initiate_device_flow(scopes=[settings.scope])
                if "user_code" not in flow:
                    raise SessionError(f"device code sign-in failed: {describe_error(flow)}")
                show_device_code(flow["message"])
                result = app.acquire_token_by_device_flow(flow)
    except OSError as exc:
        raise SessionError(f"cannot reach the issuer {settings.authority}: {exc}") from None
    finally:
        app.http_client.close()
    if "access_token" not in result:
        raise SessionError(f"sign-in failed: {describe_error(result)}")
    claims = result.get("id_token_claims") or {}
    signed_in = replace(settings, username=str(claims.get("preferred_username") or username or ""))
    save_cache(cache, force=True)
    forget_client_secret()
    signed_in.save()
    return signed_in


def _cached_account(
    app: Any, where: str, username: str | None, preferred: str | None
) -> dict[str, Any] | None:
    """The cached account to refresh: the one named, else the saved login's, else the only one."""
    if username:
        named = app.get_accounts(username=username)
        return named[0] if named else None
    accounts = app.get_accounts()
    if preferred:
        for account in accounts:
            if str(account.get("username", "")).lower() == preferred.lower():
                return dict(account)
    if len(accounts) > 1:
        names = ", ".join(sorted(str(a.get("username")) for a in accounts))
        raise SessionError(f"several accounts are signed in at {where} ({names}): pass --username")
    return dict(accounts[0]) if accounts else None


def acquire_token(
    settings: ClientSettings,
    login: str,
    *,
    username: str | None = None,
    password: Callable[[], str] | None = None,
    preferred_username: str | None = None,
    show: Callable[[str], None] = print,
) -> dict[str, Any]:
    """A token for `settings.scope`: from msal's token cache (refreshed silently) when it can, else
    by signing in with `login` (device code: `show` gets the message for the person; ropc: the
    password; spn: the client secret of `settings`). The cache is saved either way."""
    cache = load_cache()
    app = msal_app(settings, cache)
    scopes = [settings.scope]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # msal discourages ROPC for public clients
            if login == SPN:
                result = app.acquire_token_for_client(scopes)  # the cache first, since msal 1.23
            else:
                account = _cached_account(app, settings.authority, username, preferred_username)
                result = app.acquire_token_silent(scopes, account=account) if account else None
                if not result or "access_token" not in result:
                    result = _interactive(app, login, scopes, username, password, show)
    except OSError as exc:
        raise SessionError(f"cannot reach the issuer {settings.authority}: {exc}") from None
    finally:
        save_cache(cache)
        app.http_client.close()
    if not result or "access_token" not in result:
        raise SessionError(f"sign-in failed: {describe_error(result)}")
    return dict(result)


def _interactive(
    app: Any,
    login: str,
    scopes: list[str],
    username: str | None,
    password: Callable[[], str] | None,
    show: Callable[[str], None],
) -> dict[str, Any]:
    if login == ROPC:
        if not username:
            raise SessionError("--login ropc needs --username (and the password on --password-stdin)")
        if password is None:
            raise SessionError(f"no cached sign-in for {username}: give the password with --password-stdin")
        return dict(app.acquire_token_by_username_password(username, password(), scopes=scopes))
    flow = app.initiate_device_flow(scopes=scopes)
    if "user_code" not in flow:
        raise SessionError(f"device code sign-in failed: {describe_error(flow)}")
    show(str(flow["message"]))
    return dict(app.acquire_token_by_device_flow(flow))


class Session:
    """Tokens for the saved sign-in; one msal application per session (discovery fetched once)."""

    def __init__(self, settings: ClientSettings | None = None) -> None:
        self.settings = settings or ClientSettings.load()
        self.cache = load_cache()
        self._app: Any = None

    @property
    def app(self) -> Any:
        if self._app is None:
            self._app = msal_app(self.settings, self.cache)
        return self._app

    def access_token(self, force_refresh: bool = False) -> str:
        s = self.settings
        try:
            if s.auth_mode == SERVICE_PRINCIPAL:
                who = f"service principal {s.client_id}"
                result = self.app.acquire_token_for_client([s.scope])
            else:
                who = s.username or "the saved user"
                accounts = self.app.get_accounts(username=s.username) if s.username else []
                if not accounts:
                    raise SessionError(f"not signed in to {s.hub_url}: run `kubearc login --hub {s.hub_url}`")
                result = self.app.acquire_token_silent(
                    [s.scope], account=accounts[0], force_refresh=force_refresh
                )
        except OSError as exc:
            raise SessionError(f"cannot reach the issuer {s.authority}: {exc}") from None
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # msal on entries it did not write
            raise SessionError(
                f"the saved sign-in in {cache_path()} cannot be read ({type(exc).__name__}): "
                f"run `kubearc login --hub {s.hub_url}` again"
            ) from None
        finally:
            save_cache(self.cache)
        if not result or "access_token" not in result:
            raise SessionError(
                f"the saved sign-in of {who} cannot get a token ({describe_error(result)}): "
                f"run `kubearc login --hub {s.hub_url}` again"
            )
        return str(result["access_token"])

    def client(self, timeout: float = 30.0) -> httpx.Client:
        """An HTTPS client for the hub API; every request carries a current token."""
        token = self.access_token()  # fail now, with the sign-in message, rather than on first use
        return _HubClient(
            self,
            base_url=self.settings.hub_url,
            verify=ssl_context(self.settings.ca_file),
            headers={"Authorization": f"Bearer {token}"},
            auth=_SessionAuth(self),
            timeout=timeout,
        )

    def close(self) -> None:
        """Close msal's connections to the issuer."""
        if self._app is not None:
            self._app.http_client.close()


class _HubClient(httpx.Client):
    """An httpx client that also closes msal's connections to the issuer."""

    def __init__(self, session: Session, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._session = session

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._session.close()

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._session.close()


class _SessionAuth(httpx.Auth):
    def __init__(self, session: Session) -> None:
        self.session = session

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.session.access_token()}"
        yield request


def access_token() -> str:
    """A current access token for the hub, from the saved sign-in (no prompt, no browser)."""
    current = Session()
    try:
        return current.access_token()
    finally:
        current.close()


def hub_client(timeout: float = 30.0) -> httpx.Client:
    """An httpx client for the saved hub: base URL, its CA, and the Authorization header."""
    return Session().client(timeout)
