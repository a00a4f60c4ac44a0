"""The mux over a real websocket on loopback: credit must survive streams that die mid-transfer.

A stream reset (by either side) while it still holds received, unread bytes must
give those bytes back to the connection window; otherwise each such reset leaks
credit and, after a handful, the whole session stalls for every stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from proxy.mux import Mux
from proxy.protocol.frames import ErrorCode
from proxy.protocol.session import Role, Session, Settings
from proxy.stream import Stream, StreamError
from proxy.wsconn import DirectClientConnection, DirectServerConnection

pytestmark = pytest.mark.sqlite_only

SETTINGS = Settings(initial_window=256 * 1024, connection_window=1024 * 1024)
CHUNK = b"x" * 65536


async def sender(stream: Stream) -> None:
    """The 'apiserver' side: accept, then send until reset; or send `resetAfter` bytes, wait for
    one message back and reset (so the RST cannot overtake the data)."""
    stream.accept()
    limit = stream.target.get("resetAfter")
    sent = 0
    try:
        while limit is None or sent < limit:
            await stream.write(CHUNK)
            sent += len(CHUNK)
        await stream.read()  # the reader's signal that it holds our bytes, unread
    except StreamError:
        return
    stream.reset(ErrorCode.INTERNAL_ERROR, "apiserver connection dropped")


@pytest.fixture
async def pair() -> AsyncIterator[Callable[[], Mux]]:
    """A listener mux whose streams send forever, and the dialler mux the test drives."""
    async with asyncio.TaskGroup() as tasks:
        listener: list[Mux] = []

        async def handler(ws: ServerConnection) -> None:
            assert isinstance(ws, DirectServerConnection)
            mux = Mux(Session(Role.LISTENER, SETTINGS), ws, sender)
            listener.append(mux)
            await mux.run()

        async with serve(
            handler, "127.0.0.1", 0, max_size=None, compression=None, create_connection=DirectServerConnection
        ) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(
                f"ws://127.0.0.1:{port}",
                max_size=None,
                compression=None,
                create_connection=DirectClientConnection,
            ) as ws:
                assert isinstance(ws, DirectClientConnection)
                dialler = Mux(Session(Role.DIALLER, SETTINGS), ws)
                runner = tasks.create_task(dialler.run())
                await asyncio.wait_for(dialler.hello, 5)
                yield lambda: dialler
                await dialler.close()
                await asyncio.wait_for(runner, 5)
            assert listener


async def read_some(stream: Stream, at_least: int, consume: bool) -> int:
    got = 0
    while got < at_least:
        data = await asyncio.wait_for(stream.read(), 5)
        got += len(data)
        if consume:
            stream.consumed(len(data))
    return got


@pytest.mark.parametrize("who", ["local", "peer"])
async def test_resets_with_unread_data_do_not_leak_connection_credit(
    pair: Callable[[], Mux], who: str
) -> None:
    mux = pair()
    # Each stream receives up to its 256 KiB window without the reader consuming; 30 such
    # streams would hold 7.5 MiB, far beyond the 1 MiB connection window, if their unread
    # bytes were not credited back when they go.
    for _ in range(30):
        if who == "local":
            stream = await mux.open({}, wait=5)
            await read_some(stream, 128 * 1024, consume=False)
            stream.reset(ErrorCode.CANCEL, "client went away")
        else:  # the peer sends 192 KiB, which we hold unconsumed, then resets
            stream = await mux.open({"resetAfter": 3 * len(CHUNK)}, wait=5)
            await read_some(stream, 3 * len(CHUNK), consume=False)
            await stream.write(b"go")
            with pytest.raises(StreamError, match="apiserver connection dropped"):
                await asyncio.wait_for(stream.wait_failed(), 5)
        assert stream.id not in mux.streams
    # A fresh stream still flows at full speed: 4 MiB through a 1 MiB connection window.
    stream = await mux.open({}, wait=5)
    assert await read_some(stream, 4 * 1024 * 1024, consume=True) >= 4 * 1024 * 1024
    stream.reset()
    assert mux.buffered == 0
