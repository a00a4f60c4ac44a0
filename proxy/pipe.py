"""Moving bytes between a tunnel stream and a TCP socket, or between two streams.

Both directions run as sibling tasks; half-close is carried across (TCP FIN ↔
tunnel FIN), and credit is granted back only after bytes were handed on, so a
slow reader slows only its own stream.
"""

from __future__ import annotations

import asyncio
import contextlib

from proxy.mux import Stream, StreamError
from proxy.protocol.frames import ErrorCode

READ_SIZE = 64 * 1024


async def _socket_to_stream(reader: asyncio.StreamReader, stream: Stream) -> None:
    while data := await reader.read(READ_SIZE):
        await stream.write(data)
    await stream.write_eof()


async def _stream_to_socket(stream: Stream, writer: asyncio.StreamWriter) -> None:
    while data := await stream.read():
        writer.write(data)
        await writer.drain()
        stream.consumed(len(data))
    if writer.can_write_eof():
        writer.write_eof()


async def pipe_socket(stream: Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Join `stream` and a TCP connection until both directions have ended."""
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_socket_to_stream(reader, stream))
            tasks.create_task(_stream_to_socket(stream, writer))
    except* (StreamError, ConnectionError, OSError) as group:
        code = ErrorCode.CANCEL
        for exc in group.exceptions:
            if isinstance(exc, StreamError):
                code = ErrorCode(exc.code) if exc.code in ErrorCode._value2member_map_ else ErrorCode.CANCEL
        stream.reset(code, "connection closed")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        stream.mux.forget(stream.id)


async def _forward(src: Stream, dst: Stream) -> None:
    while data := await src.read():
        await dst.write(data)
        src.consumed(len(data))
    await dst.write_eof()


async def pipe_streams(a: Stream, b: Stream) -> None:
    """Join two streams (the relay's switch): each direction ends on its own FIN."""
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_forward(a, b))
            tasks.create_task(_forward(b, a))
    except* StreamError as group:
        exc = group.exceptions[0]
        code = (
            exc.code if isinstance(exc, StreamError) and isinstance(exc.code, ErrorCode) else ErrorCode.CANCEL
        )
        reason = exc.reason if isinstance(exc, StreamError) else "peer reset"
        a.reset(code, reason)
        b.reset(code, reason)
    finally:
        a.mux.forget(a.id)
        b.mux.forget(b.id)
