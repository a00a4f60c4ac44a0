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
users, groups and userextras/oid) and `Impersonate-*` headers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import ssl
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from foundation.logs import setup_logging
from kubearc.commands.guard import (
    GraphAuthorityOpt,
    GraphClientIdOpt,
    GraphUrlOpt,
    authenticators,
    graph_groups,
)

if TYPE_CHECKING:
    from agents.hubclient import HubClient
    from foundation.identitystore import IdentityStore

log = logging.getLogger("kubearc.guard.proxy")
DEFAULT_IDENTITY = "secret:azure-arc/azure-identity-certificate"


class _ServingCertificate:
    """The hub-issued serving certificate on disk (ssl wants files), renewed in place."""

    def __init__(self, hub: HubClient, store: IdentityStore) -> None:
        self.hub, self.store = hub, store
        self.directory = Path(tempfile.mkdtemp(prefix="kubearc-aad-proxy-"))  # mode 0700
        self.cert, self.key = self.directory / "tls.crt", self.directory / "tls.key"
        self.server_name = ""
        self.renew_after = dt.datetime.now(dt.UTC)

    async def fetch(self) -> None:
        """Ask the hub for a certificate for a fresh key, with the identity currently in the store."""
        from foundation import pki
        from foundation.identitystore import StoreError

        stored = await self.store.load()
        if stored is None:
            raise StoreError("no identity certificate yet: is `kubearc agent identity` running?")
        self.hub.set_identity(stored.pair)
        key = pki.new_key()
        issued, self.server_name = await self.hub.aad_proxy_certificate(key)
        pki.KeyPair(key, issued.certificate).write(self.cert, self.key)
        self.renew_after = issued.renew_after

    async def keep_renewed(self, tls: ssl.SSLContext) -> None:
        while True:
            wait = (self.renew_after - dt.datetime.now(dt.UTC)).total_seconds()
            await asyncio.sleep(max(60.0, wait))
            try:
                await self.fetch()
                tls.load_cert_chain(self.cert, self.key)  # new handshakes get the new certificate
                log.info("serving certificate renewed", extra={"renewAfter": self.renew_after.isoformat()})
            except Exception as exc:  # keep serving with the current one; try again later
                log.warning("cannot renew the serving certificate", extra={"error": str(exc)[:300]})
                self.renew_after = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def aad_proxy(
    hub: str = typer.Option(..., "--hub", envvar="KUBEARC_HUB_URL", help="Hub URL (serving certificate)."),
    hub_ca: Path = typer.Option(None, "--hub-ca", envvar="KUBEARC_HUB_CA", help="PEM CA bundle of the hub."),
    identity: str = typer.Option(
        DEFAULT_IDENTITY, "--identity", envvar="KUBEARC_IDENTITY_STORE", help="file:DIR or secret:NS/NAME."
    ),
    listen: str = typer.Option(
        "127.0.0.1:8443",
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
    log_level: str = typer.Option("info", "--log-level", envvar="KUBEARC_LOG_LEVEL"),
    log_format: str = typer.Option("json", "--log-format", envvar="KUBEARC_LOG_FORMAT", help="json or text."),
) -> None:
    """kube-aad-proxy: authenticate Entra users and forward to the apiserver as them (impersonation)."""
    from agents.hubclient import HubClient
    from foundation.identitystore import StoreError, open_store
    from foundation.kube import Kube
    from foundation.metrics import serve_probes
    from guard.assemble import AuthzSettings, IdentityCredential, azure_authorizer, check_cluster_resource_id
    from guard.authn.chain import AuthnChain
    from guard.authz.actions import CONNECTED_CLUSTERS
    from guard.impersonation import ImpersonatingProxy, ProxySettings, serving_context, upstream_from_kube
    from guard.impersonation.metrics import proxy_registry
    from guard.impersonation.upstream import parse_address
    from kubearc.commands.agent import _execute

    if not (entra_tenant or issuer):
        raise typer.BadParameter("give --entra-tenant or --issuer", param_hint="--issuer")
    if not audience:
        raise typer.BadParameter("give the accepted token audience", param_hint="--audience")
    try:
        host, port = parse_address(listen)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--listen") from None
    try:
        probes_host, probes_port = parse_address(probes_listen)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--probes-listen") from None
    if cluster_resource_id:
        try:
            cluster_resource_id = check_cluster_resource_id(cluster_resource_id, CONNECTED_CLUSTERS)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--cluster-resource-id") from None
    setup_logging(log_level, log_format)
    hub = hub.rstrip("/")
    ca = str(issuer_ca) if issuer_ca else None
    graph = graph_groups(graph_client_id, graph_authority, graph_url, entra_tenant, issuer, ca)
    chain = AuthnChain(authenticators(entra_tenant, issuer, audience, ca, graph))
    kube = Kube(kubeconfig)
    store = open_store(identity, kube if identity.startswith("secret:") else None)

    async def main() -> None:
        upstream = upstream_from_kube(kube, apiserver)
        authorizer = None
        if authorize:
            stored = await store.load()
            rid = cluster_resource_id or (stored.resource_id if stored else None)
            if not rid:
                raise StoreError(f"{store.description} names no cluster: give --cluster-resource-id")
            settings = AuthzSettings(
                cluster_resource_id=rid,
                checkaccess_url=checkaccess_url or hub,
                checkaccess_ca=str(hub_ca) if hub_ca else None,
            )
            authorizer = azure_authorizer(settings, IdentityCredential(store, hub))
        async with HubClient(hub, hub_ca) as client:
            serving = _ServingCertificate(client, store)
            try:
                await serving.fetch()
                tls = serving_context(str(serving.cert), str(serving.key))
                proxy = ImpersonatingProxy(
                    upstream, chain, authorizer, ProxySettings(max_body_bytes=max_body)
                )
                server = await proxy.start(host, port, tls)
                bound = server.sockets[0].getsockname()[1]
                typer.echo(
                    f"kubearc guard proxy: listening on https://{host}:{bound} as {serving.server_name}; "
                    f"apiserver {upstream.authority}; authorization {'on' if authorize else 'off'}",
                    err=True,
                )
                registry = proxy_registry(proxy)
                async with server, asyncio.TaskGroup() as tasks:
                    tasks.create_task(serving.keep_renewed(tls))
                    tasks.create_task(serve_probes(probes_host, probes_port, registry, lambda: None))
            finally:
                serving.remove()
                if authorizer is not None:
                    await authorizer.client.aclose()
                if graph is not None:
                    await graph.aclose()

    _execute("aad-proxy", main())
