"""The hub's discovery document (`/.well-known/kubearc-configuration`).

The first thing `kubearc login`, the relay and the connect agent read: which
issuer signs user and relay credentials, which audience the hub accepts, and
where the relay is. Its shape is `foundation.wire.Discovery`, shared with every
client.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from foundation.wire import DISCOVERY_PATH, Discovery
from hub.context import hub_of
from hub.issuer.tokens import CLI_CLIENT_ID


async def discovery(request: Request) -> Response:
    hub = hub_of(request)
    local = hub.config.local_issuer
    document = Discovery(
        hub_audience=hub.config.audiences[0],
        cli_client_id=CLI_CLIENT_ID,
        relay_url=hub.config.relay,
        relay_issuer=hub.issuer,
        issuer=hub.issuer if local else None,
        tenant_id=hub.tenant_id if local else None,
        entra_tenants=tuple(hub.config.entra_tenants),
    )
    return JSONResponse(document.to_json())


routes: list[BaseRoute] = [Route(DISCOVERY_PATH, discovery, methods=["GET"])]
