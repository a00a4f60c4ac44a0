"""The shared dialler through the client proxy: PING liveness and GOAWAY against a relay stand-in.

The stand-in is a real wss server (websockets, TLS on loopback) whose sessions
are our own listener `Mux`es echoing every stream; the test can make a session
deaf (it stops reading, so it answers no PING while TCP stays up) or send GOAWAY
from it. The client proxy is the real one, with real sockets in front of it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from foundation import pki
from foundation.retry import RetryPolicy
from proxy.client import ClientProxy, Credential
from proxy.mux import Mux
from proxy.protocol.frames import ErrorCode
from proxy.protocol.session import Role, Session
from proxy.stream import Stream
from proxy.wsconn import DirectServerConnection
from tests.test_tunnel_safety import until

pytestmark = pytest.mark.sqlite_only

FAST = RetryPolicy(base=0.05, cap=0.2, deadline=None)


@dataclass
class RelayStandIn:
    """Each client session is a listener mux that echoes its streams; `served[i]` counts session i's."""

    sessions: list[Mux] = field(default_factory=list)
    connections: list[DirectServerConnection] = field(default_factory=list)
    served: list[int] = field(default_factory=list)

    async def handle(self, ws: ServerConnection) -> None:
        assert isinstance(ws, DirectServerConnection)
        index = len(self.sessions)
        self.served.append(0)

        async def echo(stream: Stream) -> None:
            self.served[index] += 1
            stream.accept()
            while chunk := await stream.read():
                await stream.write(chunk)
                stream.consumed(len(chunk))
            await stream.write_eof()

        mux = Mux(Session(Role.LISTENER), ws, echo)
        self.sessions.append(mux)
        self.connections.append(ws)
        await mux.run()

    def deafen(self, index: int) -> None:
        """Session `index` stops taking messages (no PONG, no WINDOW, nothing); TCP stays up."""
        self.connections[index].deliver_to(lambda _message: None, lambda: None)


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[tuple[RelayStandIn, ClientProxy]]:
    ca, cert, key = pki.ensure_serving_pair(tmp_path / "tls", ["127.0.0.1"], "test relay CA")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    stand_in = RelayStandIn()
    async with serve(
        stand_in.handle,
        "127.0.0.1",
        0,
        ssl=context,
        compression=None,
        ping_interval=None,
        create_connection=DirectServerConnection,
    ) as server:
        url = f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}/relay/v1/client"

        async def credentials() -> Credential:
            return Credential(url, "a-relay-credential", time.time() + 3600, b"", "")

        proxy = ClientProxy(
            credentials, port=0, relay_ca_file=str(ca), backoff=FAST, ping_interval=0.2, ping_timeout=0.6
        )
        stop, listening = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(proxy.run(lambda _port: listening.set(), stop))
        await asyncio.wait_for(listening.wait(), 10)
        await until(lambda: proxy.mux is not None, "the proxy's first session")
        try:
            yield stand_in, proxy
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


async def connection(proxy: ClientProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def echoes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, text: bytes) -> None:
    writer.write(text)
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(len(text)), 10) == text


async def test_the_client_proxy_replaces_a_relay_session_that_stops_answering_pings(
    relay: tuple[RelayStandIn, ClientProxy],
) -> None:
    stand_in, proxy = relay
    first = proxy.mux
    await echoes(*await connection(proxy), b"before")
    stand_in.deafen(0)
    await until(lambda: len(stand_in.sessions) == 2, "a new session after the PINGs went unanswered")
    await until(lambda: proxy.mux is not None and proxy.mux is not first, "the proxy to use the new session")
    await echoes(*await connection(proxy), b"after")
    assert stand_in.served == [1, 1]  # the new connection went through the new session
    assert proxy.dialler.sessions_started == 2


async def test_after_goaway_new_streams_move_to_a_new_session_while_old_ones_finish(
    relay: tuple[RelayStandIn, ClientProxy],
) -> None:
    stand_in, proxy = relay
    first = proxy.mux
    old_reader, old_writer = await connection(proxy)
    await echoes(old_reader, old_writer, b"one")
    stand_in.sessions[0].goaway(ErrorCode.NO_ERROR, "relay shutting down")
    await until(lambda: proxy.mux is not None and proxy.mux is not first, "a new session after GOAWAY")
    await echoes(*await connection(proxy), b"two")
    assert stand_in.served == [1, 1]
    # The stream opened before the GOAWAY still runs on the old session, to its end.
    await echoes(old_reader, old_writer, b"still here")
    old_writer.write_eof()
    assert await asyncio.wait_for(old_reader.read(), 10) == b""
    assert first is not None and first.failure is None
    await until(lambda: not first.streams, "the old stream to finish")
    assert proxy.dialler.failed_attempts == 0  # a GOAWAY is no failure: no backoff
