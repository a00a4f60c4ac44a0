"""One multiplexed byte stream of a tunnel session, as the code above the mux sees it.

A `Stream` is read and written with `read`/`write` (tasks) or driven by callbacks
through a `StreamListener` (`proxy/pipe.py`). Tens of thousands may sit idle, so
a stream owns no task and makes its events and buffers only when first needed.
Credit goes back to the peer only when the application says the bytes were handed
on (`consumed`), which carries backpressure end to end.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from proxy.protocol.frames import ErrorCode
from proxy.protocol.session import SessionClosed

if TYPE_CHECKING:
    from proxy.mux import Mux

log = logging.getLogger("kubearc.tunnel")


class StreamError(Exception):
    def __init__(self, code: ErrorCode | int, reason: str) -> None:
        super().__init__(f"{reason} ({code!r})")
        self.code = code
        self.reason = reason


class StreamListener(Protocol):
    """Takes a stream's events as callbacks instead of `read`/`write` calls (see `pipe.py`).

    Callbacks run inside the mux's reader, so they must not block: they hand data on at once
    (`Stream.send_now`, a transport's `write`) and call `consumed` when it has really left.
    """

    def stream_data(self, stream: Stream, data: bytes | memoryview) -> None: ...

    def stream_eof(self, stream: Stream) -> None: ...

    def stream_writable(self, stream: Stream) -> None: ...

    def stream_failed(self, stream: Stream, error: StreamError) -> None: ...


class Stream:
    """One multiplexed byte stream with half-close: async `read`/`write`, or a `StreamListener`.

    Tens of thousands may sit idle, so a stream holds no task and creates its events and
    buffers only when first needed.
    """

    __slots__ = (
        "_accepted",
        "_chunks",
        "_failed",
        "_readable",
        "_writable",
        "buffered",
        "eof",
        "error",
        "id",
        "listener",
        "mux",
        "peak_buffered",
        "released",
        "target",
    )

    def __init__(self, mux: Mux, sid: int, target: dict[str, Any]) -> None:
        self.mux = mux
        self.id = sid
        self.target = target
        self.listener: StreamListener | None = None
        self._chunks: deque[bytes | memoryview] | None = None
        self._readable: asyncio.Event | None = None
        self._writable: asyncio.Event | None = None
        self._failed: asyncio.Event | None = None  # set once `error` is: a reset, or the session ended
        self._accepted: asyncio.Future[None] | None = None  # only for streams we open
        self.eof = False
        self.error: StreamError | None = None
        self.buffered = 0  # bytes received and not yet consumed: at most our window
        self.peak_buffered = 0
        self.released = False  # left the mux: its buffered bytes were credited back already

    def listen(self, listener: StreamListener) -> None:
        """Deliver this stream's events to `listener` from now on (what arrived before, at once)."""
        self.listener = listener
        while self._chunks and self.listener is not None:
            self._notify(listener.stream_data, self._chunks.popleft())
        if self.error is not None:
            self._wake()
        elif self.eof:
            self._notify(listener.stream_eof)

    # Reading ------------------------------------------------------------------------------

    async def read(self) -> bytes:
        """Next chunk; b"" once the peer half-closed. Call `consumed` after handing it on."""
        while not self._chunks:
            if self.error:
                raise self.error
            if self.eof:
                return b""
            if self._readable is None:
                self._readable = asyncio.Event()
            self._readable.clear()
            await self._readable.wait()
        return bytes(self._chunks.popleft())

    def consumed(self, size: int) -> None:
        if self.released:  # `release` already gave this credit back to the connection
            return
        self.buffered -= size
        self.mux.session.consumed(self.id, size)
        self.mux.wake_writer()

    def release(self) -> None:
        """Drop what was received and not consumed, crediting it back to the connection window.

        Without this every stream reset mid-transfer would keep its unread bytes charged against
        the connection, and after a few such resets the whole session would stall.
        """
        if self.released:
            return
        self.released = True
        self._chunks = None
        if self.buffered:
            self.mux.session.consumed(self.id, self.buffered)
            self.buffered = 0
            self.mux.wake_writer()

    # Writing ------------------------------------------------------------------------------

    def send_now(self, data: bytes | memoryview) -> int:
        """Queue as much of `data` as credit allows, without waiting; return how much was taken.

        When not all of it was, `stream_writable` (or a waiting `write`) follows once credit
        arrives.
        """
        if self.error:
            raise self.error
        try:
            taken = self.mux.session.send(self.id, data)
        except SessionClosed as exc:
            raise StreamError(ErrorCode.STREAM_CLOSED, str(exc)) from None
        if taken:
            self.mux.bytes_sent += taken
            self.mux.wake_writer()
        if taken < len(data):
            self.mux.starved.add(self)
            self.mux.blocked += 1
        return taken

    async def write(self, data: bytes | memoryview) -> None:
        """Send all of `data`, waiting for credit as needed."""
        view = memoryview(data)
        while view:
            if self._writable is None:
                self._writable = asyncio.Event()
            self._writable.clear()
            view = view[self.send_now(view) :]
            if view and self.mux.session.send_capacity(self.id) == 0:
                await self._writable.wait()

    async def write_eof(self) -> None:
        self.write_eof_now()

    def write_eof_now(self) -> None:
        self.mux.session.send_fin(self.id)
        self.mux.wake_writer()

    async def wait_failed(self) -> None:
        """Raise the stream's error once it is reset or its session ends (never returns otherwise).

        For I/O loops blocked on something else (a socket that neither reads nor writes).
        """
        if self.error is None:
            if self._failed is None:
                self._failed = asyncio.Event()
            await self._failed.wait()
        assert self.error is not None
        raise self.error

    def reset(self, code: ErrorCode = ErrorCode.CANCEL, reason: str = "") -> None:
        if self.error is None:
            self.error = StreamError(code, reason or "reset locally")
        self.mux.session.reset(self.id, code, reason)
        self.mux.forget(self.id)
        self.mux.wake_writer()
        self._wake()

    # Driven by the mux --------------------------------------------------------------------

    def _data(self, data: bytes | memoryview) -> None:
        self.buffered += len(data)
        if self.buffered > self.peak_buffered:
            self.peak_buffered = self.buffered
            if self.buffered > self.mux.peak_stream_buffered:
                self.mux.peak_stream_buffered = self.buffered
        if self.listener is not None:
            self._notify(self.listener.stream_data, data)
            return
        if self._chunks is None:
            self._chunks = deque()
        self._chunks.append(data)
        if self._readable is not None:
            self._readable.set()

    def _ended(self) -> None:
        self.eof = True
        if self.listener is not None:
            self._notify(self.listener.stream_eof)
        elif self._readable is not None:
            self._readable.set()

    def _on_writable(self) -> None:
        if self.listener is not None:
            self._notify(self.listener.stream_writable)
        if self._writable is not None:
            self._writable.set()

    def _fail_open(self) -> None:
        accepted = self._accepted
        if accepted is not None and not accepted.done() and self.error is not None:
            accepted.set_exception(self.error)
            accepted.exception()  # retrieved: the opener may be gone

    def _wake(self) -> None:
        """After an error: every waiter and the listener learn of it (once)."""
        for event in (self._readable, self._writable, self._failed):
            if event is not None:
                event.set()
        listener, self.listener = self.listener, None
        if listener is not None and self.error is not None:
            try:
                listener.stream_failed(self, self.error)
            except Exception:
                log.exception("stream listener failed", extra={"stream": self.id})

    def _notify(self, callback: Callable[..., None], *args: Any) -> None:
        """Run a listener callback; a failing one costs its stream, never the session."""
        try:
            callback(self, *args)
        except Exception:
            log.exception("stream listener failed", extra={"stream": self.id})
            self.reset(ErrorCode.INTERNAL_ERROR, "stream handler failed")
