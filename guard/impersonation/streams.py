"""The proxy's byte-level plumbing: h11 events from a stream, the apiserver connection, the raw splice.

Kept apart from the request logic in `proxy.py` so each stays readable; nothing
here knows about users or Kubernetes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import h11

READ_SIZE = 64 * 1024


async def next_event(conn: h11.Connection, reader: asyncio.StreamReader, idle: float | None) -> object:
    """The next h11 event, reading as needed; `idle` bounds each wait for bytes (None: no bound,
    for response bodies: a watch may stay quiet for minutes)."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        if idle is None:
            data = await reader.read(READ_SIZE)
        else:
            async with asyncio.timeout(idle):
                data = await reader.read(READ_SIZE)
        conn.receive_data(data)


class UpstreamConnection:
    """One TLS connection to the apiserver and its h11 client state (kept alive between requests)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=256 * 1024)

    @property
    def reusable(self) -> bool:
        """Idle and not closed by the apiserver meanwhile."""
        return self.conn.our_state is h11.IDLE and not self.reader.at_eof()

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    def close(self) -> None:
        self.writer.transport.abort()


async def stop(task: asyncio.Future[Any]) -> None:
    """Cancel a helper task and wait until it has stopped (without taking on its error)."""
    if not task.done():
        task.cancel()
    await asyncio.wait({task})


def has_body(request: h11.Request) -> bool:
    """Whether a request carries a body (so it cannot be replayed on a new connection)."""
    return any(
        name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
        for name, value in request.headers
    )


async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Bytes from src to dst until EOF; half-close dst when its transport can (TLS cannot)."""
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
        while data := await src.read(READ_SIZE):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()


async def splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    grace: float,
) -> None:
    """Move bytes both ways until both directions end, or `grace` seconds after the first one does
    (TLS has no half-close, so a peer that stopped sending may still be reading for a moment)."""
    one = asyncio.create_task(copy(a[0], b[1]))
    other = asyncio.create_task(copy(b[0], a[1]))
    try:
        _, pending = await asyncio.wait({one, other}, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending, timeout=grace)
    finally:
        await stop(one)
        await stop(other)
