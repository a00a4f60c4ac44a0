"""`kubearc guard proxy`: impersonation mode, Arc's kube-aad-proxy, for apiservers that cannot call guard.

Runs in the cluster beside the connect agent, which is pointed at it
(`kubearc agent connect --apiserver <this --listen>`). At start it asks the hub,
with the cluster's identity, for a serving certificate (which also switches the
cluster's `listClusterUserCredential` to this proxy's CA and server name) and
renews it half-way through its life. Users' Entra tokens are verified here
(guard's authenticators); with `--authorize`, each request's Kubernetes
attributes are checked against Azure RBAC through the hub's checkAccess (only
Allowed passes); requests reach the apiserver with this proxy's own credential
(`--kubeconfig`, else the pod's service account, which needs RBAC to impersonate
users, groups and userextras/oid) and `Impersonate-*` headers. This command only
maps flags to guard's options and wires the hub's client in; running it all is
`guard/impersonation/service.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from foundation.logs import setup_logging
from kubearc.commands import listenopts
from kubearc.commands.agent import DEFAULT_IDENTITY
from kubearc.commands.guard import (
    GraphAuthorityOpt,
    GraphClientIdOpt,
    GraphUrlOpt,
    authn_options,
    usage_errors,
)

if TYPE_CHECKING:
    from agents.hubclient import HubClient
    from foundation.identitystore import IdentityStore
    from foundation.pki import PrivateKey
    from guard.impersonation.serving import Issue, Issued


def aad_proxy(
    hub: str = typer.Option(..., "--hub", envvar="KUBEARC_HUB_URL", help="Hub URL (serving certificate)."),
    hub_ca: Path = typer.Option(None, "--hub-ca", envvar="KUBEARC_HUB_CA", help="PEM CA bundle of the hub."),
    identity: str = typer.Option(
        DEFAULT_IDENTITY, "--identity", envvar="KUBEARC_IDENTITY_STORE", help="file:DIR or secret:NS/NAME."
    ),
    listen: str = typer.Option(
        "127.0.0.1:8446",
        "--listen",
        envvar="KUBEARC_AAD_PROXY_LISTEN",
        help="HOST:PORT to serve on (in a cluster 0.0.0.0:PORT behind a Service).",
    ),
    kubeconfig: Path = typer.Option(
        None,
        "--kubeconfig",
        help="The proxy's own apiserver credential (default: in-cluster service account).",
    ),
    apiserver: str = typer.Option(
        None,
        "--apiserver",
        envvar="KUBEARC_APISERVER",
        help="HOST:PORT to connect to instead of the config's.",
    ),
    entra_tenant: list[str] = typer.Option(
        [], "--entra-tenant", help="Entra tenant whose tokens are accepted."
    ),
    issuer: list[str] = typer.Option([], "--issuer", help="Other OIDC issuer accepted (the hub's issuer)."),
    audience: list[str] = typer.Option([], "--audience", help="Accepted token audience (repeatable)."),
    issuer_ca: Path = typer.Option(
        None, "--issuer-ca", help="CA bundle of a self-signed issuer and its Graph."
    ),
    graph_client_id: str = GraphClientIdOpt,
    graph_authority: str = GraphAuthorityOpt,
    graph_url: str = GraphUrlOpt,
    authorize: bool = typer.Option(
        False, "--authorize/--no-authorize", help="Check Azure RBAC per request (only Allowed passes)."
    ),
    cluster_resource_id: str = typer.Option(
        None, "--cluster-resource-id", help="ARM id for --authorize (default: from the identity store)."
    ),
    checkaccess_url: str = typer.Option(
        None, "--checkaccess-url", help="checkAccess endpoint (default: --hub)."
    ),
    probes_listen: str = typer.Option(
        "127.0.0.1:9090",
        "--probes-listen",
        envvar="KUBEARC_AAD_PROXY_PROBES_LISTEN",
        help="HOST:PORT for /healthz, /readyz and /metrics in plain HTTP (keep it off public networks).",
    ),
    max_body: int = typer.Option(16 * 1024 * 1024, "--max-body", min=1, help="Largest request body (bytes)."),
    # a third: each client connection brings one to the apiserver
    max_connections: int | None = listenopts.max_connections_option("a third"),
    max_pending: int = listenopts.MaxPendingPortOpt,
    max_pending_per_address: int = listenopts.MaxPendingOpt,
    handshake_timeout: str = listenopts.HandshakeTimeoutOpt,
    header_timeout: str = listenopts.HeaderTimeoutOpt,
    idle_timeout: str = listenopts.IdleTimeoutOpt,
    log_level: str = typer.Option("info", "--log-level", envvar="KUBEARC_LOG_LEVEL"),
    log_format: str = typer.Option("json", "--log-format", envvar="KUBEARC_LOG_FORMAT", help="json or text."),
) -> None:
    """kube-aad-proxy: authenticate Entra users and forward to the apiserver as them (impersonation)."""
    from agents.hubclient import HubClient
    from foundation.identitystore import open_store
    from foundation.kube import Kube
    from guard.authz.options import AuthzOptions, check_cluster_resource_id
    from guard.authz.provider import AuthorizerConfig
    from guard.impersonation.proxy import ProxySettings
    from guard.impersonation.service import Listeners, cluster_authorizer, serve_proxy
    from guard.impersonation.serving import ServingCertificate
    from guard.impersonation.upstream import parse_address, upstream_from_kube
    from kubearc.commands.agent import _execute

    hub = hub.rstrip("/")
    with usage_errors():
        graph = (graph_client_id, graph_authority, graph_url)
        authn = authn_options(entra_tenant, issuer, audience, issuer_ca, graph, oidc_only=True)
        authn.validate()
        listeners = Listeners(
            *parse_address(listen, "--listen"), *parse_address(probes_listen, "--probes-listen")
        )
        authz = AuthzOptions(
            AuthorizerConfig(cluster_resource_id or ""),
            checkaccess_url=checkaccess_url or hub,
            checkaccess_ca=str(hub_ca) if hub_ca else None,
            identity=identity,
            identity_audience=hub,
            kubeconfig=kubeconfig,
        )
        if authz.enabled:
            check_cluster_resource_id(authz.rules.cluster_resource_id)
        timeouts = (handshake_timeout, header_timeout, idle_timeout)
        caps = listenopts.limits(
            max_connections, 1 / 3, max_pending_per_address, *timeouts, max_pending=max_pending
        )
        setup_logging(log_level, log_format)
        chain = authn.build()
    kube = Kube(kubeconfig)
    store = open_store(identity, kube if identity.startswith("secret:") else None)

    async def main() -> None:
        upstream = upstream_from_kube(kube, apiserver)
        authorizer = await cluster_authorizer(authz, store, hub) if authorize else None
        async with HubClient(hub, hub_ca) as client:
            serving = ServingCertificate(hub_issuer(client, store))
            settings = ProxySettings(max_body_bytes=max_body, limits=caps)
            await serve_proxy(listeners, upstream, chain, authorizer, serving, settings, _announce)

    _execute("aad-proxy", main())


def _announce(line: str) -> None:
    typer.echo(line, err=True)


def hub_issuer(client: HubClient, store: IdentityStore) -> Issue:
    """The serving certificate from the hub, asked with the identity currently in the store."""

    async def issue(key: PrivateKey) -> Issued:
        from foundation.identitystore import StoreError
        from guard.impersonation.serving import Issued

        stored = await store.load()
        if stored is None:
            raise StoreError("no identity certificate yet: is `kubearc agent identity` running?")
        client.set_identity(stored.pair)
        issued, server_name = await client.aad_proxy_certificate(key)
        return Issued(issued.certificate, issued.renew_after, server_name)

    return issue
