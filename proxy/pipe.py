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
    clean = False
    try:
        async with asyncio.TaskGroup() as tasks:
            # Both directions may be blocked on the socket (a peer that neither reads nor
            # writes); the watch ends the pipe when the stream is reset or its session ends.
            watch = tasks.create_task(stream.wait_failed())
            directions = [
                tasks.create_task(_socket_to_stream(reader, stream)),
                tasks.create_task(_stream_to_socket(stream, writer)),
            ]
            await asyncio.wait(directions)
            watch.cancel()
        clean = True
    except* (StreamError, ConnectionError, OSError) as group:
        code = ErrorCode.CANCEL
        for exc in group.exceptions:
            if isinstance(exc, StreamError):
                code = ErrorCode(exc.code) if exc.code in ErrorCode._value2member_map_ else ErrorCode.CANCEL
        stream.reset(code, "connection closed")
    finally:
        if not clean:
            # A broken or abandoned stream: drop the socket at once. A graceful close would
            # wait (forever, if the peer stopped reading) to flush bytes nobody will take.
            stream.reset(ErrorCode.CANCEL, "connection closed")
            writer.transport.abort()
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
    clean = False
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_forward(a, b))
            tasks.create_task(_forward(b, a))
        clean = True
    except* StreamError as group:
        exc = group.exceptions[0]
        code = (
            exc.code if isinstance(exc, StreamError) and isinstance(exc.code, ErrorCode) else ErrorCode.CANCEL
        )
        reason = exc.reason if isinstance(exc, StreamError) else "peer reset"
        a.reset(code, reason)
        b.reset(code, reason)
    finally:
        if not clean:  # cancelled (a session ended under us): neither half may outlive the pipe
            a.reset(ErrorCode.CANCEL, "relay stream cancelled")
            b.reset(ErrorCode.CANCEL, "relay stream cancelled")
        a.mux.forget(a.id)
        b.mux.forget(b.id)
