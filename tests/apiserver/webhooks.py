"""Webhook token authentication and webhook authorization, as a kube-apiserver configured for guard does.

Configured the way an admin configures a real apiserver: the authentication
webhook's kubeconfig (`--authentication-token-webhook-config-file`) and either
the authorization webhook's kubeconfig or an `AuthorizationConfiguration`
naming one (`--authorization-config`), with the webhook versions (`v1beta1` by
default, as in v1.36). What the calls look like follows what a real v1.36
apiserver sent guard (REFERENCE section 6 and `tests/captures/`):
`POST <server>?timeout=30s` over mutual TLS with the kubeconfig's client pair,
`spec.audiences` the apiserver's own audience, groups in `spec.group` for a
v1beta1 SubjectAccessReview and `spec.groups` for v1, `system:authenticated`
added to the webhook user's groups, `resourceAttributes.version` the request's.

Bearer tokens the stand-in issued itself (its admin token, service accounts)
authenticate first and are not sent to the webhook (a real apiserver's token
file and service-account authenticators come before the webhook, and its RBAC
grants those users what the stand-in lets them do). A webhook user is
authorized on every request: `allowed` lets it through, `denied` or no opinion
falls to the default RBAC rules (discovery and public information for
authenticated users, `system:discovery` and `system:public-info-viewer`), and
then to the apiserver's 403 `Forbidden` message. Results are cached as the
apiserver caches them: tokens 2 minutes, allows 5 minutes, denials 30 seconds.

A webhook URL on a Service name (`https://NAME.NS.svc:PORT/...`) is dialled at
the address `resolve` gives (the node emulator's pods), with SNI and the Host
header on the Service name: what DNS and kube-proxy do for an apiserver on a
node.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import yaml

from tests.apiserver import errors

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from tests.apiserver.app import ApiServerState

AUDIENCES = ["https://kubernetes.default.svc"]  # the apiserver's --api-audiences (its SA issuer)
TOKEN_TTL, AUTHORIZED_TTL, UNAUTHORIZED_TTL = 120.0, 300.0, 30.0
# The paths default RBAC opens to every authenticated user (system:discovery, public-info-viewer).
DISCOVERY = ("/api", "/apis", "/version", "/openapi", "/healthz", "/livez", "/readyz", "/.well-known")
STREAMING = {"exec", "attach", "portforward"}  # authorized as `create` (websocket upgrades, v1.35+)

Resolve = Callable[[str], str | None]  # a Service host name → an address to dial, or None


@dataclass(frozen=True)
class UserInfo:
    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Attributes:
    """What a request asks to do, as the apiserver's RequestInfo reads it from method and path."""

    verb: str
    path: str
    resource: str = ""  # empty: a non-resource request (`path`)
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    group: str = ""
    version: str = ""

    def wire(self) -> dict[str, Any]:
        if not self.resource:
            return {"nonResourceAttributes": {"path": self.path, "verb": self.verb}}
        attrs = {
            "namespace": self.namespace,
            "verb": self.verb,
            "group": self.group,
            "version": self.version,
            "resource": self.resource,
            "subresource": self.subresource,
            "name": self.name,
        }
        return {"resourceAttributes": {k: v for k, v in attrs.items() if v}}

    def forbidden(self, user: str, reason: str) -> errors.StatusError:
        """The apiserver's 403, word for word."""
        why = f": {reason}" if reason else ""
        if not self.resource:
            message = f'forbidden: User "{user}" cannot {self.verb} path "{self.path}"{why}'
            return errors.StatusError(403, "Forbidden", message, empty_details=True)
        shown = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        subject = f'{self.resource} "{self.name}"' if self.name else self.resource
        where = f'in the namespace "{self.namespace}"' if self.namespace else "at the cluster scope"
        message = (
            f'{subject} is forbidden: User "{user}" cannot {self.verb} resource "{shown}" '
            f'in API group "{self.group}" {where}{why}'
        )
        return errors.StatusError(
            403, "Forbidden", message, name=self.name or None, kind=self.resource, group=self.group
        )


def attributes(method: str, path: str, query: str = "", upgrade: bool = False) -> Attributes:
    parts = [p for p in path.split("/") if p]
    watch = any(kv in ("watch=true", "watch=1") for kv in query.split("&"))
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        rest = []
    verb = method.lower()
    if not rest:
        return Attributes("get" if verb == "head" else verb, "/" + "/".join(parts))
    if rest[0] == "watch":
        watch, rest = True, rest[1:]
    namespace = ""
    if len(rest) > 2 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    resource, name, subresource = rest[0], (rest[1:2] or [""])[0], "/".join(rest[2:])
    if resource == "namespaces" and name:
        namespace = name
    if subresource in STREAMING or upgrade:
        verb = "create"
    elif verb in ("get", "head"):
        verb = "watch" if watch else ("get" if name else "list")
    elif verb == "post":
        verb = "create"
    elif verb == "put":
        verb = "update"
    elif verb == "delete" and not name:
        verb = "deletecollection"
    return Attributes(verb, path, resource, subresource, namespace, name, group, version)


@dataclass
class _Webhook:
    url: str
    client: httpx.AsyncClient
    host: str

    @classmethod
    def from_kubeconfig(cls, doc: dict[str, Any], directory: Path) -> _Webhook:
        """The first cluster and user of a webhook kubeconfig: the URL, its CA and the client pair."""
        cluster = doc["clusters"][0]["cluster"]
        user = doc["users"][0]["user"]
        context = ssl.create_default_context(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
        pair = Path(tempfile.mkdtemp(dir=directory))
        (pair / "c.crt").write_bytes(base64.b64decode(user["client-certificate-data"]))
        (pair / "c.key").write_bytes(base64.b64decode(user["client-key-data"]))
        context.load_cert_chain(pair / "c.crt", pair / "c.key")
        client = httpx.AsyncClient(verify=context, timeout=30.0, trust_env=False)
        return cls(cluster["server"], client, urlsplit(cluster["server"]).hostname or "")

    async def review(self, body: dict[str, Any], resolve: Resolve | None) -> dict[str, Any]:
        url, extensions = self.url, {}
        address = resolve(self.host) if resolve else None
        if address is not None:  # dial the Service's endpoint, verify and say the Service name
            split = urlsplit(self.url)
            url = urlunsplit(split._replace(netloc=split.netloc.replace(self.host, address, 1)))
            extensions = {"sni_hostname": self.host}
        response = await self.client.post(
            url,
            params={"timeout": "30s"},
            content=json.dumps(body).encode(),
            headers={
                "Accept": "application/json, */*",
                "Content-Type": "application/json",
                "User-Agent": "kube-apiserver-standin/v1.36",
                "Host": urlsplit(self.url).netloc,
            },
            extensions=extensions,
        )
        response.raise_for_status()
        doc: dict[str, Any] = response.json()
        return doc


class Webhooks:
    """The stand-in's webhook authenticator and authorizer, with the apiserver's caches."""

    def __init__(
        self,
        authn: dict[str, Any] | None,
        authz: dict[str, Any] | None,
        *,
        directory: Path,
        authn_version: str = "v1beta1",
        authz_version: str = "v1beta1",
        resolve: Resolve | None = None,
        read: Callable[[str], dict[str, Any]] | None = None,
    ) -> None:
        """`authn`: the authentication webhook's kubeconfig; `authz`: the authorization webhook's, or an
        AuthorizationConfiguration whose Webhook authorizer names one that `read` loads."""
        self.authn = _Webhook.from_kubeconfig(authn, directory) if authn else None
        self.authz_version, self.authz_ttl = authz_version, (AUTHORIZED_TTL, UNAUTHORIZED_TTL)
        self.authz = None
        if authz and authz.get("kind") == "AuthorizationConfiguration":
            hook = next(a["webhook"] for a in authz["authorizers"] if a["type"] == "Webhook")
            self.authz_version = hook.get("subjectAccessReviewVersion", "v1")
            self.authz_ttl = (
                _seconds(hook.get("authorizedTTL", "5m")),
                _seconds(hook.get("unauthorizedTTL", "30s")),
            )
            path = hook["connectionInfo"]["kubeConfigFile"]
            kubeconfig = read(path) if read else yaml.safe_load(Path(path).read_text())
            self.authz = _Webhook.from_kubeconfig(kubeconfig, directory)
        elif authz:
            self.authz = _Webhook.from_kubeconfig(authz, directory)
        self.authn_version, self.resolve = authn_version, resolve
        self._tokens: dict[str, tuple[float, UserInfo]] = {}
        self._decisions: dict[tuple[Any, ...], tuple[float, bool, str]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []  # (kind, request body) for tests to read

    def cached_user(self, token: str) -> UserInfo | None:
        hit = self._tokens.get(token)
        return hit[1] if hit and hit[0] > time.monotonic() else None

    async def authenticate(self, token: str) -> UserInfo | None:
        """The webhook's user for a bearer token, or None (the request is then a 401)."""
        if self.authn is None or not token:
            return None
        if (user := self.cached_user(token)) is not None:
            return user
        body = {
            "apiVersion": f"authentication.k8s.io/{self.authn_version}",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": None},
            "spec": {"token": token, "audiences": AUDIENCES},
            "status": {"user": {}},
        }
        self.calls.append(("TokenReview", body))
        try:
            status = (await self.authn.review(body, self.resolve)).get("status") or {}
        except (httpx.HTTPError, ValueError):
            return None  # the apiserver logs the failure and answers 401
        if not status.get("authenticated"):
            return None
        u = status.get("user") or {}
        user = UserInfo(
            u.get("username", ""), u.get("uid", ""), tuple(u.get("groups") or ()), u.get("extra") or {}
        )
        self._tokens[token] = (time.monotonic() + TOKEN_TTL, user)
        return user

    async def authorize(self, user: UserInfo, attrs: Attributes) -> None:
        """Nothing when allowed; the apiserver's 403 otherwise."""
        groups = (*user.groups, "system:authenticated")
        key = (user.username, groups, json.dumps(user.extra, sort_keys=True), attrs)
        hit = self._decisions.get(key)
        if hit and hit[0] > time.monotonic():
            allowed, reason = hit[1], hit[2]
        else:
            allowed, reason, answered = await self._ask(user, groups, attrs)
            if answered:  # a failed call is not cached: the next request asks again
                ttl = self.authz_ttl[0] if allowed else self.authz_ttl[1]
                self._decisions[key] = (time.monotonic() + ttl, allowed, reason)
        if allowed or (not attrs.resource and attrs.verb in ("get", "head") and _discovery(attrs.path)):
            return
        raise attrs.forbidden(user.username, reason)

    async def _ask(
        self, user: UserInfo, groups: tuple[str, ...], attrs: Attributes
    ) -> tuple[bool, str, bool]:
        """(allowed, reason, whether the webhook answered)."""
        if self.authz is None:
            return False, "", False
        spec: dict[str, Any] = {**attrs.wire(), "user": user.username, "extra": user.extra}
        spec["group" if self.authz_version == "v1beta1" else "groups"] = list(groups)
        if user.uid:
            spec["uid"] = user.uid
        body = {
            "apiVersion": f"authorization.k8s.io/{self.authz_version}",
            "kind": "SubjectAccessReview",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": {"allowed": False},
        }
        self.calls.append(("SubjectAccessReview", body))
        try:
            status = (await self.authz.review(body, self.resolve)).get("status") or {}
        except (httpx.HTTPError, ValueError) as exc:  # failure policy NoOpinion: RBAC decides
            return False, f"the authorization webhook failed: {exc}", False
        return bool(status.get("allowed")), str(status.get("reason") or ""), True


def _discovery(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in DISCOVERY)


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if value.endswith(unit) and value[: -len(unit)].replace(".", "", 1).isdigit():
            return float(value[: -len(unit)]) * units[unit]
    raise ValueError(f"not a duration: {value!r}")


async def admit(
    state: ApiServerState, method: str, path: str, query: str, authorization: str, upgrade: bool
) -> None:
    """A token the stand-in does not know goes to the authentication webhook; its user's request to
    the authorization webhook (a StatusError when refused). Every transport calls it: the ASGI
    wrapper below (HTTP/1.1, HTTP/2, websockets) and the direct SPDY upgrade path."""
    hooks = state.webhooks
    scheme, _, token = authorization.partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    if hooks is None or not token or token in state.tokens:
        return
    user = await hooks.authenticate(token)
    if user is not None:
        await hooks.authorize(user, attributes(method, path, query, upgrade))


def webhook_authorized(app: ASGIApp, state: ApiServerState) -> ASGIApp:
    """`admit` before the app; inside, `ApiServerState.authenticate` finds the webhook's user in
    the token cache."""

    async def check(scope: Scope, receive: Receive, send: Send) -> None:
        if state.webhooks is not None and scope["type"] in ("http", "websocket"):
            value = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
            query = scope.get("query_string", b"").decode()
            method = scope.get("method", "GET")
            try:
                await admit(state, method, scope["path"], query, value, scope["type"] == "websocket")
            except errors.StatusError as exc:
                await deny(scope, send, exc)
                return
        await app(scope, receive, send)

    return check


async def deny(scope: Scope, send: Send, exc: errors.StatusError) -> None:
    """A Status answer before the app: an HTTP response, or a websocket upgrade's denial."""
    body = json.dumps(exc.body()).encode()
    kind = "websocket.http.response" if scope["type"] == "websocket" else "http.response"
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": f"{kind}.start", "status": exc.code, "headers": headers})
    await send({"type": f"{kind}.body", "body": body})
