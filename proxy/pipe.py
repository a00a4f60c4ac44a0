"""Moving bytes between a tunnel stream and a TCP socket, or between two streams.

Both pipes are callbacks, not tasks: bytes are handed on in the same loop turn
they arrive in, which saves a task switch per hop, a copy through a
StreamReader, and the memory of idle tasks (a stream may sit open for hours in a
`kubectl get -w`). Backpressure is carried end to end all the same: credit is
granted back only for bytes that were handed on (`Stream.consumed`), a socket
stops being read while its stream has no credit (`pause_reading`), and a stream's
bytes stop being acknowledged while the socket's send buffer is full
(`pause_writing`). Half-close crosses over (TCP FIN <-> tunnel FIN); a stream that
breaks (reset, or its session lost) resets its socket (TCP RST), so a truncated
transfer never passes for a finished one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import cast

from foundation.transports import reset_transport
from proxy.errors import StreamError
from proxy.protocol.frames import ErrorCode
from proxy.stream import Stream


def _code(error: StreamError) -> ErrorCode:
    return error.code if isinstance(error.code, ErrorCode) else ErrorCode.CANCEL


class SocketPipe(asyncio.Protocol):
    """A TCP connection joined to one tunnel stream (`kubearc proxy` and the connect agent).

    Made by the event loop for a connection; `attach` joins it to its stream once the stream is
    open (until then the socket is not read).
    """

    def __init__(self, stream: Stream | None = None) -> None:
        self.stream = stream
        self.transport: asyncio.Transport | None = None
        self._pending: memoryview | None = None  # socket bytes the stream had no credit for yet
        self._eof_pending = False  # the socket ended while `_pending` still waited
        self._write_paused = False
        self._unacked = 0  # stream bytes written to the socket while its buffer was full
        self._sent_fin = False  # socket -> stream finished
        self._got_fin = False  # stream -> socket finished
        self._done = False

    # Joining ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass
        if self.stream is None:
            self.transport.pause_reading()
        else:
            self._join()

    def attach(self, stream: Stream) -> None:
        """Join the (already accepted) stream: from here bytes flow both ways."""
        if self._done:  # the socket went away while the stream was being opened
            stream.reset(ErrorCode.CANCEL, "connection closed")
            return
        self.stream = stream
        if self.transport is not None:  # else connection_made joins them
            self._join()

    def _join(self) -> None:
        assert self.stream is not None
        self.stream.listen(self)
        if not self._done:
            self.stream_writable(self.stream)  # what arrived before the join, and an early FIN
            if self._pending is None and not self._eof_pending and self.transport is not None:
                self.transport.resume_reading()

    # Socket -> stream ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.stream is None or self._pending is not None:
            # Before `attach` (uvloop may deliver a first read even before connection_made), or
            # while we wait for credit: hold it; reading is paused, so this is one read at most.
            view = memoryview(data)
            self._pending = view if self._pending is None else memoryview(bytes(self._pending) + data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        self._push(memoryview(data))

    def _push(self, view: memoryview) -> None:
        assert self.stream is not None and self.transport is not None
        try:
            taken = self.stream.send_now(view)
        except StreamError:
            self._abort()
            return
        if taken < len(view):
            self._pending = view[taken:]
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self._pending is not None or self.stream is None:
            self._eof_pending = True
        else:
            self._send_fin()
        return True  # keep our writing half open: the other direction may go on

    def _send_fin(self) -> None:
        assert self.stream is not None
        self._sent_fin = True
        self._eof_pending = False
        try:
            self.stream.write_eof_now()
        except StreamError:
            self._abort()
            return
        self._finish_if_done()

    def stream_writable(self, stream: Stream) -> None:
        if self._pending is not None:
            view, self._pending = self._pending, None
            self._push(view)
        elif not self._eof_pending:
            return
        if self._pending is None and not self._done:
            if self._eof_pending:
                self._send_fin()
            elif self.transport is not None:
                self.transport.resume_reading()

    # Stream -> socket ---------------------------------------------------------------------

    def stream_data(self, stream: Stream, data: bytes | memoryview) -> None:
        assert self.transport is not None
        if self.transport.is_closing():  # the socket went away; connection_lost resets the stream
            return
        self.transport.write(data)
        if self._write_paused:
            self._unacked += len(data)
        else:
            stream.consumed(len(data))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._unacked and self.stream is not None:
            unacked, self._unacked = self._unacked, 0
            self.stream.consumed(unacked)

    def stream_eof(self, stream: Stream) -> None:
        assert self.transport is not None
        self._got_fin = True
        if self.transport.is_closing():
            return
        try:
            self.transport.write_eof()
        except OSError:  # the peer is gone already (ENOTCONN): end the stream as a broken one
            self._abort()
            return
        self._finish_if_done()

    # Endings ------------------------------------------------------------------------------

    def _finish_if_done(self) -> None:
        if self._sent_fin and self._got_fin and not self._done:
            self._done = True
            assert self.stream is not None and self.transport is not None
            # The socket takes what it buffered with it: acknowledge that, and the stream (both
            # FINs through, nothing held) leaves its session by itself.
            unacked, self._unacked = self._unacked, 0
            if unacked:
                self.stream.consumed(unacked)
            self.transport.close()  # flushes what is buffered, then closes

    def stream_failed(self, stream: Stream, error: StreamError) -> None:
        # A broken or abandoned stream: drop the socket at once. A graceful close would wait
        # (forever, if the peer stopped reading) to flush bytes nobody will take.
        self._done = True
        if self.transport is not None:
            reset_transport(self.transport)

    def _abort(self) -> None:
        self._done = True
        if self.stream is not None:
            self.stream.reset(ErrorCode.CANCEL, "connection closed")
        if self.transport is not None:
            reset_transport(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done:
            self._done = True
            if self.stream is not None:
                self.stream.reset(ErrorCode.CANCEL, "connection closed")


class StreamPipe:
    """Two streams joined (the relay's switch): each direction ends on its own FIN.

    Bytes one side had no credit for wait here, in order, and are not acknowledged to
    their sender until taken, so each direction holds at most one window.
    """

    def __init__(self, a: Stream, b: Stream, on_done: Callable[[], None] | None = None) -> None:
        self.a, self.b = a, b
        self._on_done = on_done
        self._pending: dict[Stream, deque[memoryview]] = {}  # by source, what the other side refused
        self._fin_pending: set[Stream] = set()  # sources whose FIN waits behind `_pending`
        self._finished: set[Stream] = set()  # sources whose FIN was passed on
        self._done = False

    def start(self) -> None:
        self.a.listen(self)
        if not self._done:
            self.b.listen(self)

    def _other(self, stream: Stream) -> Stream:
        return self.b if stream is self.a else self.a

    def _forward(self, src: Stream, view: memoryview) -> bool:
        """Hand `view` from `src` to the other side; False if some of it must wait for credit."""
        try:
            taken = self._other(src).send_now(view)
        except StreamError as exc:
            self._fail(exc)
            return False
        if taken:
            src.consumed(taken)
        if taken < len(view):
            self._pending.setdefault(src, deque()).appendleft(view[taken:])
            return False
        return True

    def stream_data(self, stream: Stream, data: bytes | memoryview) -> None:
        waiting = self._pending.get(stream)
        if waiting:
            waiting.append(memoryview(data))
        else:
            self._forward(stream, memoryview(data))

    def stream_writable(self, stream: Stream) -> None:
        src = self._other(stream)
        waiting = self._pending.get(src)
        while waiting and not self._done:
            if not self._forward(src, waiting.popleft()):
                return
        self._pending.pop(src, None)
        if src in self._fin_pending and not self._done:
            self._fin_pending.discard(src)
            self._pass_fin(src)

    def stream_eof(self, stream: Stream) -> None:
        if self._pending.get(stream):
            self._fin_pending.add(stream)
        else:
            self._pass_fin(stream)

    def _pass_fin(self, src: Stream) -> None:
        try:
            self._other(src).write_eof_now()
        except StreamError as exc:
            self._fail(exc)
            return
        self._finished.add(src)
        if len(self._finished) == 2:
            self._done = True  # both streams left their sessions by themselves
            self._ended()

    def _ended(self) -> None:
        if self._on_done is not None:
            on_done, self._on_done = self._on_done, None
            on_done()

    def stream_failed(self, stream: Stream, error: StreamError) -> None:
        self._fail(error)

    def _fail(self, error: StreamError) -> None:
        if self._done:
            return
        self._done = True
        self._pending.clear()
        for stream in (self.a, self.b):
            stream.reset(_code(error), error.reason)
        self._ended()

    def close(self) -> None:
        """The relay is going away under the pipe: neither half may outlive it."""
        self._fail(StreamError(ErrorCode.CANCEL, "relay stream cancelled"))
