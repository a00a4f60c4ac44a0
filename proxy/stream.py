"""One multiplexed byte stream of a tunnel session, as the code above the mux sees it.

A `Stream` is read and written with `read`/`write` (tasks) or driven by callbacks
through a `StreamListener` (`proxy/pipe.py`). Tens of thousands may sit idle, so
a stream owns no task and makes its events and buffers only when first needed.
Credit goes back to the peer only when the application says the bytes were handed
on (`consumed`), which carries backpressure end to end.

A stream knows its session only through the small `StreamOwner` interface (the
mux implements it), and the owner drives it through its `on_*` methods. A stream
leaves its session by itself: when both directions have ended and nothing is left
unread, or when it is reset. Nobody above it has to tell the mux to forget it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from proxy.errors import StreamError
from proxy.protocol.frames import ErrorCode

log = logging.getLogger("kubearc.tunnel")

__all__ = ["Stream", "StreamError", "StreamListener", "StreamOwner"]


class StreamListener(Protocol):
    """Takes a stream's events as callbacks instead of `read`/`write` calls (see `pipe.py`).

    Callbacks run inside the mux's reader, so they must not block: they hand data on at once
    (`Stream.send_now`, a transport's `write`) and call `consumed` when it has really left.
    """

    def stream_data(self, stream: Stream, data: bytes | memoryview) -> None: ...

    def stream_eof(self, stream: Stream) -> None: ...

    def stream_writable(self, stream: Stream) -> None: ...

    def stream_failed(self, stream: Stream, error: StreamError) -> None: ...


class StreamOwner(Protocol):
    """What a stream asks of its session (`proxy.mux.Mux`). Each call that queues frames sends them."""

    def stream_send(self, stream: Stream, data: bytes | memoryview) -> int: ...

    def stream_capacity(self, stream: Stream) -> int: ...

    def stream_window(self, stream: Stream) -> int: ...

    def stream_fin(self, stream: Stream) -> None: ...

    def stream_consumed(self, stream: Stream, size: int) -> None: ...

    def stream_accept(self, stream: Stream) -> None: ...

    def stream_refuse(self, stream: Stream, code: ErrorCode, reason: str) -> None: ...

    def stream_reset(self, stream: Stream, code: ErrorCode, reason: str) -> None: ...

    def stream_done(self, stream: Stream) -> None: ...


class Stream:
    """One multiplexed byte stream with half-close: async `read`/`write`, or a `StreamListener`.

    Tens of thousands may sit idle, so a stream holds no task and creates its events and
    buffers only when first needed.
    """

    __slots__ = (
        "_accepted",
        "_chunks",
        "_failed",
        "_fin_sent",
        "_readable",
        "_writable",
        "buffered",
        "eof",
        "error",
        "id",
        "listener",
        "owner",
        "peak_buffered",
        "released",
        "target",
    )

    def __init__(self, owner: StreamOwner, sid: int, target: dict[str, Any], opening: bool = False) -> None:
        self.owner = owner
        self.id = sid
        self.target = target
        self.listener: StreamListener | None = None
        self._chunks: deque[bytes | memoryview] | None = None
        self._readable: asyncio.Event | None = None
        self._writable: asyncio.Event | None = None
        self._failed: asyncio.Event | None = None  # set once `error` is: a reset, or the session ended
        # Only for streams we open: resolved by the peer's answer.
        self._accepted: asyncio.Future[None] | None = (
            asyncio.get_running_loop().create_future() if opening else None
        )
        self._fin_sent = False
        self.eof = False  # the peer half-closed
        self.error: StreamError | None = None
        self.buffered = 0  # bytes received and not yet consumed: at most our window
        self.peak_buffered = 0
        self.released = False  # left the session: its buffered bytes were credited back already

    @property
    def window(self) -> int:
        """The receive window this side grants the peer for this stream now (introspection)."""
        return self.owner.stream_window(self)

    # Answering the peer's OPEN -------------------------------------------------------------

    def accept(self) -> None:
        """Answer the peer's OPEN: the stream is ready for data both ways."""
        self.owner.stream_accept(self)

    def refuse(self, code: ErrorCode, reason: str) -> None:
        """Answer the peer's OPEN with an error the peer's user will see."""
        self.owner.stream_refuse(self, code, reason)
        self.release()

    async def accepted(self, wait: float) -> None:
        """For a stream we opened: wait (at most `wait` seconds) until the peer accepts it."""
        assert self._accepted is not None, "only streams opened by this side wait for an answer"
        try:
            await asyncio.wait_for(asyncio.shield(self._accepted), wait)
        except TimeoutError:
            self.reset(ErrorCode.TIMEOUT, "open timed out")
            raise StreamError(ErrorCode.TIMEOUT, f"no answer to OPEN within {wait}s") from None
        except asyncio.CancelledError:  # whoever wanted the stream is gone: do not leave it open
            self.reset(ErrorCode.CANCEL, "open cancelled")
            raise

    def listen(self, listener: StreamListener) -> None:
        """Deliver this stream's events to `listener` from now on (what arrived before, at once)."""
        self.listener = listener
        while self._chunks and self.listener is not None:
            self._notify(listener.stream_data, self._chunks.popleft())
        if self.error is not None:
            self._wake()
        elif self.eof:
            self._notify(listener.stream_eof)
            self._finish_if_done()

    # Reading ------------------------------------------------------------------------------

    async def read(self) -> bytes:
        """Next chunk; b"" once the peer half-closed. Call `consumed` after handing it on."""
        while not self._chunks:
            if self.error:
                raise self.error
            if self.eof:
                self._finish_if_done()
                return b""
            if self._readable is None:
                self._readable = asyncio.Event()
            self._readable.clear()
            await self._readable.wait()
        chunk = bytes(self._chunks.popleft())
        self._finish_if_done()
        return chunk

    def consumed(self, size: int) -> None:
        if self.released:  # `release` already gave this credit back to the connection
            return
        self.buffered -= size
        self.owner.stream_consumed(self, size)
        if not self.buffered and self.eof and self._fin_sent:  # the data path skips the call
            self._finish_if_done()

    def release(self) -> None:
        """Leave the session: drop what was received and not consumed, crediting it back.

        Without the credit every stream reset mid-transfer would keep its unread bytes charged
        against the connection, and after a few such resets the whole session would stall.
        """
        if self.released:
            return
        self.released = True
        self._chunks = None
        if self.buffered:
            self.owner.stream_consumed(self, self.buffered)
            self.buffered = 0
        self.owner.stream_done(self)

    def _finish_if_done(self) -> None:
        """Both directions ended and every byte received was handed on: the stream is over."""
        if self._fin_sent and self.eof and not self.buffered and not self.released and self.error is None:
            self.release()

    # Writing ------------------------------------------------------------------------------

    def send_now(self, data: bytes | memoryview) -> int:
        """Queue as much of `data` as credit allows, without waiting; return how much was taken.

        When not all of it was, `stream_writable` (or a waiting `write`) follows once credit
        arrives.
        """
        if self.error:
            raise self.error
        return self.owner.stream_send(self, data)

    async def write(self, data: bytes | memoryview) -> None:
        """Send all of `data`, waiting for credit as needed."""
        view = memoryview(data)
        while view:
            if self._writable is None:
                self._writable = asyncio.Event()
            self._writable.clear()
            view = view[self.send_now(view) :]
            if view and self.owner.stream_capacity(self) == 0:
                await self._writable.wait()

    async def write_eof(self) -> None:
        self.write_eof_now()

    def write_eof_now(self) -> None:
        if self._fin_sent:
            return
        self._fin_sent = True
        self.owner.stream_fin(self)
        self._finish_if_done()

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
        self.owner.stream_reset(self, code, reason)
        self.release()
        self._wake()

    # Driven by the owner ------------------------------------------------------------------

    def on_data(self, data: bytes | memoryview) -> None:
        self.buffered += len(data)
        if self.buffered > self.peak_buffered:
            self.peak_buffered = self.buffered
        if self.listener is not None:
            self._notify(self.listener.stream_data, data)
            return
        if self._chunks is None:
            self._chunks = deque()
        self._chunks.append(data)
        if self._readable is not None:
            self._readable.set()

    def on_eof(self) -> None:
        self.eof = True
        if self.listener is not None:
            self._notify(self.listener.stream_eof)
            self._finish_if_done()
        elif self._readable is not None:
            self._readable.set()

    def on_writable(self) -> None:
        if self.listener is not None:
            self._notify(self.listener.stream_writable)
        if self._writable is not None:
            self._writable.set()

    def on_accepted(self) -> None:
        if self._accepted is not None and not self._accepted.done():
            self._accepted.set_result(None)

    def on_failed(self, error: StreamError, credit: bool = True) -> None:
        """The peer reset or refused the stream, or the session ended (`credit`: False)."""
        if credit:
            self.release()
        else:
            self.released = True
        self.error = self.error or error
        accepted = self._accepted
        if accepted is not None and not accepted.done():
            accepted.set_exception(self.error)
            accepted.exception()  # retrieved: the opener may be gone
        self._wake()

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
