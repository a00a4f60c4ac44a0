"""The relay's network front end: a dedicated websockets server (wss), no ASGI on the data path.

Credentials are checked during the HTTP upgrade (`process_request`), so a refused
caller gets a plain 401 with a reason and never a websocket.

`serve` runs until its stop event, then shuts down gracefully: it stops listening
at once (so a successor process can take the port: with `reuse_port` it may even
listen beside this one before), answers 503 to any upgrade still arriving, leaves
the replica set (given a `Registration`), and drains the relay (`Relay.drain`)
before it returns.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from foundation.gate import Gate, GateCollector, Limits
from foundation.wire import RELAY_AGENT_PATH, RELAY_CLIENT_PATH
from proxy.errors import HubUnavailable, RenewalRefused, Unauthorized
from proxy.registry import Registration
from proxy.relay import Relay
from proxy.relay_auth import AgentIdentity, ClientIdentity, HubAuth, bearer
from proxy.wsconn import DirectServerConnection, GatedServerConnection

log = logging.getLogger("kubearc.relay")

MAX_MESSAGE = 2 * 1024 * 1024  # above the largest DATA frame plus header


@dataclass
class RelayServer:
    relay: Relay
    auth: HubAuth
    host: str = "127.0.0.1"
    port: int = 8444
    ssl_context: ssl.SSLContext | None = None
    drain: float = 30.0  # seconds open streams may take to finish on shutdown
    reuse_port: bool = False  # SO_REUSEPORT: a new relay process may listen beside this one
    limits: Limits = field(default_factory=Limits)  # what unauthenticated peers may hold
    registration: Registration | None = None  # this replica's place in the replica set

    def __post_init__(self) -> None:
        # Admission and TLS for every connection (foundation.gate); websockets sees plain TCP.
        self.gate = Gate(self.limits, self.ssl_context, name="relay")
        self.relay.metrics.registry.register(GateCollector(self.gate, "kubearc_relay"))

    async def _authenticate(self, connection: ServerConnection, request: Request) -> Response | None:
        assert isinstance(connection, GatedServerConnection)
        path = request.path.split("?", 1)[0]
        if path not in (RELAY_AGENT_PATH, RELAY_CLIENT_PATH):
            connection.request_seen()
            if path == "/healthz":
                return connection.respond(200, "ok\n")
            if path == "/metrics":  # counts only: no cluster, user or token appears in them
                return connection.respond(200, generate_latest(self.relay.metrics.registry).decode())
            return connection.respond(404, f"no such relay endpoint {path}\n")
        try:
            return await self._admit(connection, request, path)
        finally:  # answered: the connection is no longer pending at the gate
            connection.request_seen()

    async def _admit(self, connection: GatedServerConnection, request: Request, path: str) -> Response | None:
        """None (the upgrade goes on) for a peer the hub vouches for, else the refusal."""
        if self.relay.draining:
            return _plain(connection, 503, "relay is shutting down; connect again")
        try:
            token = bearer(request.headers.get("Authorization"))
            identity: AgentIdentity | ClientIdentity = await (
                self.auth.agent(token) if path == RELAY_AGENT_PATH else self.auth.client(token)
            )
        except Unauthorized as exc:
            log.info("relay session refused", extra={"path": path, "reason": str(exc)})
            return _plain(connection, 401, str(exc))
        except HubUnavailable as exc:
            return _plain(connection, 503, str(exc))
        # Kept on the connection itself: released with it, whenever the peer goes away.
        connection.peer_identity = identity
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert isinstance(ws, DirectServerConnection)
        identity = ws.peer_identity
        if isinstance(identity, AgentIdentity):
            await self.relay.serve_agent(
                ws, identity.cluster, identity.expires_at, self._renew_agent(identity)
            )
        else:
            await self.relay.serve_client(
                ws, identity.cluster, identity.user, identity.expires_at, self._renew_client(identity)
            )

    def _renew_agent(self, current: AgentIdentity) -> Callable[[dict[str, Any]], Any]:
        async def renew(doc: dict[str, Any]) -> float:
            try:
                fresh = await self.auth.agent(str(doc.get("token", "")))  # HubUnavailable: try later
            except Unauthorized as exc:
                raise RenewalRefused(str(exc)) from None
            if fresh.cluster != current.cluster:
                raise RenewalRefused("renewed credential is for another cluster")
            return fresh.expires_at

        return renew

    def _renew_client(self, current: ClientIdentity) -> Callable[[dict[str, Any]], Any]:
        async def renew(doc: dict[str, Any]) -> float:
            try:
                fresh = await self.auth.client(str(doc.get("token", "")))  # HubUnavailable: try later
            except Unauthorized as exc:
                raise RenewalRefused(str(exc)) from None
            if (fresh.cluster, fresh.user) != (current.cluster, current.user):
                raise RenewalRefused("renewed credential is for another cluster or user")
            return fresh.expires_at

        return renew

    async def start(self) -> Server:
        return await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._authenticate,
            compression=None,
            max_size=MAX_MESSAGE,
            ping_interval=None,  # liveness is the tunnel's own PING
            write_limit=256 * 1024,
            create_connection=functools.partial(GatedServerConnection, self.gate),  # type: ignore[arg-type]
            reuse_port=self.reuse_port or None,
        )

    async def serve(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set, then shut down gracefully (see the module docstring)."""
        server = await self.start()
        try:
            async with asyncio.TaskGroup() as tasks:
                registration = self.registration
                registered = tasks.create_task(registration.run()) if registration else None
                if ready:
                    ready.set()
                await stop.wait()
                server.close(close_connections=False)  # stop listening; open sessions stay
                if registration is not None and registered is not None:
                    registered.cancel()
                    await registration.leave()
                await self.relay.drain(self.drain)
                await server.wait_closed()
        finally:
            server.close()  # also when cancelled: nothing outlives the relay
            await self.auth.aclose()

    async def serve_forever(self, ready: asyncio.Event | None = None) -> None:
        """Serve until cancelled (no drain): tests and embedding."""
        await self.serve(asyncio.Event(), ready)


def _plain(connection: ServerConnection, status: int, message: str) -> Response:
    return connection.respond(status, message + "\n")
