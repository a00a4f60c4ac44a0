"""`kubearc guard proxy` once its flags are options: the proxy, its certificate and probes, run together.

The authorizer asks the hub's checkAccess with the cluster's own agent tokens
(the identity store the connect agent uses too); its cluster is the one the
store names unless `--cluster-resource-id` says otherwise. Everything built here
is closed here, when the serving task group ends (SIGTERM cancels it).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from foundation.agenttoken import AgentTokens
from foundation.identitystore import IdentityStore, StoreError
from foundation.metrics import serve_probes
from guard.authn.chain import AuthnChain
from guard.authz.options import AuthzOptions
from guard.authz.provider import AzureAuthorizer
from guard.impersonation.metrics import proxy_registry
from guard.impersonation.proxy import ImpersonatingProxy, ProxySettings
from guard.impersonation.serving import ServingCertificate
from guard.impersonation.upstream import Upstream


@dataclasses.dataclass(frozen=True)
class Listeners:
    host: str
    port: int
    probes_host: str
    probes_port: int


async def cluster_authorizer(options: AuthzOptions, store: IdentityStore, hub: str) -> AzureAuthorizer:
    """Azure RBAC through the hub, for the cluster the options or else the identity store name."""
    if not options.rules.cluster_resource_id:
        stored = await store.load()
        rid = stored.resource_id if stored else None
        if not rid:
            raise StoreError(f"{store.description} names no cluster: give --cluster-resource-id")
        options = dataclasses.replace(
            options, rules=dataclasses.replace(options.rules, cluster_resource_id=rid)
        )
    return options.build(AgentTokens(store, hub))


async def serve_proxy(
    listeners: Listeners,
    upstream: Upstream,
    chain: AuthnChain,
    authorizer: AzureAuthorizer | None,
    serving: ServingCertificate,
    settings: ProxySettings,
    announce: Callable[[str], None],
) -> None:
    """Fetch the serving certificate, then serve, renew and answer probes until cancelled."""
    try:
        tls = await serving.fetch()
        proxy = ImpersonatingProxy(upstream, chain, authorizer, settings)
        server = await proxy.start(listeners.host, listeners.port, tls)
        bound = server.sockets[0].getsockname()[1]
        announce(
            f"kubearc guard proxy: listening on https://{listeners.host}:{bound} as {serving.server_name}; "
            f"apiserver {upstream.authority}; authorization {'on' if authorizer is not None else 'off'}"
        )
        registry = proxy_registry(proxy)
        async with server, asyncio.TaskGroup() as tasks:
            tasks.create_task(serving.run())
            tasks.create_task(
                serve_probes(listeners.probes_host, listeners.probes_port, registry, lambda: None)
            )
    finally:
        serving.remove()
        if authorizer is not None:
            await authorizer.aclose()
        await chain.aclose()
