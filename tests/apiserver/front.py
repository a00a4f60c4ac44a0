"""The stand-in's connection front: one TLS port for HTTP/2, HTTP/1.1 and direct SPDY upgrades.

A real apiserver offers `h2` and `http/1.1` through ALPN, and kubectl takes h2
for everything but upgrades. uvicorn speaks HTTP/1.1 only, and no ASGI server
passes an arbitrary `Upgrade: SPDY/3.1` to the app, so each accepted connection
starts here (it is uvicorn's `http` protocol class): ALPN `h2` goes to `h2.py`;
otherwise the request head is read, and an SPDY upgrade goes to
`spdy_upgrade.py` while everything else (websocket upgrades included) goes on to
uvicorn's own HTTP/1.1 protocol with the bytes read so far. Only the first
request of a connection is looked at: kubectl dials a fresh connection for each
upgrade.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, ClassVar

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from tests.apiserver import spdy_upgrade
from tests.apiserver.h2 import H2Protocol

if TYPE_CHECKING:
    from tests.apiserver.app import ApiServerState

ALPN = ["h2", "http/1.1"]
MAX_HEAD = 64 * 1024  # past this without a complete head, uvicorn answers (431/400)


class FrontProtocol(asyncio.Protocol):
    """Chooses each connection's protocol, then steps aside (`transport.set_protocol`)."""

    state: ClassVar[ApiServerState]

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config, self.server_state, self.app_state = config, server_state, app_state
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            self._switch(H2Protocol(self.config.loaded_app, self.server_state, self.app_state))
            return
        self.server_state.connections.add(self)  # until the head arrives, so shutdown can close it

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 and len(self.buffer) < MAX_HEAD:
            return
        self.server_state.connections.discard(self)
        request = spdy_upgrade.spdy_request(bytes(self.buffer[: end + 4])) if end >= 0 else None
        if request is not None:
            rest = bytes(self.buffer[end + 4 :])
            self._switch(spdy_upgrade.protocol(self.state, request, rest, self.server_state))
        else:
            http = AutoHTTPProtocol(  # type: ignore[call-arg]
                config=self.config, server_state=self.server_state, app_state=self.app_state
            )
            self._switch(http, bytes(self.buffer))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)

    def shutdown(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _switch(self, protocol: asyncio.Protocol, data: bytes = b"") -> None:
        assert self.transport is not None
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if data:
            protocol.data_received(data)


def front_protocol(state: ApiServerState) -> type[FrontProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to this stand-in's state."""
    return type("ApiServerFront", (FrontProtocol,), {"state": state})
