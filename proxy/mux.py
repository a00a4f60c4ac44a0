"""The asyncio layer over a tunnel `Session`: callbacks in, one flush out, many streams.

Messages arrive by callback from the websocket connection (`proxy/wsconn.py`)
and are fed to the session at once; its events are routed to the streams. The
reader never waits on a stream (data lands in that stream's buffer, bounded by
the credit we granted), so one stalled consumer cannot block the others. Frames
the session queued leave in one write at the end of each read batch, or on the
next loop turn when a stream or timer queued them, control frames first. No
task sits between the socket and the session. Streams grant credit back only
when their data has really been handed on (`Stream.consumed`), which carries
backpressure end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol

from proxy.protocol import events as ev
from proxy.protocol.frames import ErrorCode
from proxy.protocol.session import Session
from proxy.stream import Stream, StreamError

log = logging.getLogger("kubearc.tunnel")
UNSENT_LOW_WATER = 128 * 1024
# Frames written per transport write while it accepts more: a bulk backlog goes out in pieces
# that each let the transport say it is full (then the rest waits for `resume_writing`).
FLUSH_BUDGET = 256 * 1024
# PINGs that measure the round trip (window tuning): 1 s apart at first, then doubling to one a
# minute, so 100,000 idle agent sessions cost a relay under 2,000 PINGs a second.
RTT_PROBE_FIRST, RTT_PROBE_MAX = 1.0, 60.0


def limit_unsent(transport: object) -> None:
    """Keep at most ~128 KiB not yet sent in the kernel's socket buffer (TCP_NOTSENT_LOWAT).

    Without it the kernel happily queues megabytes of one bulk stream, in FIFO order, in
    front of every other stream's small reply; with it the backlog stays in the session,
    where streams take turns.
    """
    raw = getattr(transport, "transport", None)  # a websocket connection's asyncio transport
    sock = raw.get_extra_info("socket") if raw is not None else None
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if sock is None or option is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, option, UNSENT_LOW_WATER)


class Transport(Protocol):
    """A websocket carrying whole binary messages by callback (`proxy.wsconn`)."""

    @property
    def can_write(self) -> bool: ...

    def deliver_to(self, on_message: Callable[[bytes], None], on_batch: Callable[[], None]) -> None: ...

    def write_messages(self, messages: Iterable[bytes | memoryview]) -> None: ...

    async def wait_closed(self) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


StreamHandler = Callable[[Stream], Awaitable[None]]


class Mux:
    """Runs one session over one transport until either side ends it."""

    def __init__(self, session: Session, transport: Transport, handler: StreamHandler | None = None) -> None:
        self.session = session
        self.transport = transport
        self.handler = handler
        self.streams: dict[int, Stream] = {}
        self.blocked = 0  # times a writer waited for credit (a metric)
        self.bytes_received = 0  # DATA payload bytes, both metrics
        self.bytes_sent = 0
        self.starved: set[Stream] = set()  # streams that ran out of credit: woken when it returns
        self.peak_stream_buffered = 0  # the most unconsumed bytes any one stream held (a metric)
        self._loop = asyncio.get_running_loop()
        self._flush_pending = False
        self._closed = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.on_event: Callable[[ev.Event], None] | None = None  # renewals, pongs, goaway
        self.hello = asyncio.get_running_loop().create_future()

    @property
    def buffered(self) -> int:
        """Bytes received on live streams and not yet consumed: at most the connection window."""
        return sum(stream.buffered for stream in self.streams.values())

    def wake_writer(self) -> None:
        """Something was queued: write it on the next loop turn (once, however many queued it)."""
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        transport, session = self.transport, self.session
        while session.has_frames and transport.can_write:
            try:
                transport.write_messages(session.frames_to_send(FLUSH_BUDGET))
            except Exception:  # the connection is going away: its close ends the session
                return

    def forget(self, sid: int) -> None:
        stream = self.streams.pop(sid, None)
        if stream is not None:
            self.starved.discard(stream)
            stream.release()

    def accept(self, stream: Stream) -> None:
        """Answer a peer's OPEN: the stream is ready for data both ways."""
        self.session.accept(stream.id)
        self.wake_writer()

    def refuse(self, stream: Stream, code: ErrorCode, reason: str) -> None:
        """Answer a peer's OPEN with an error the peer's user will see."""
        self.session.reject(stream.id, code, reason)
        self.forget(stream.id)
        self.wake_writer()

    async def open(self, target: dict[str, Any], wait: float = 30) -> Stream:
        """Open a stream and wait (at most `wait` seconds) for the peer to accept it."""
        sid = self.session.open_stream(target)
        stream = Stream(self, sid, target)
        accepted = stream._accepted = asyncio.get_running_loop().create_future()
        self.streams[sid] = stream
        self.wake_writer()
        try:
            await asyncio.wait_for(asyncio.shield(accepted), wait)
        except TimeoutError:
            stream.reset(ErrorCode.TIMEOUT, "open timed out")
            raise StreamError(ErrorCode.TIMEOUT, f"no answer to OPEN within {wait}s") from None
        except asyncio.CancelledError:  # whoever wanted the stream is gone: do not leave it open
            stream.reset(ErrorCode.CANCEL, "open cancelled")
            raise
        return stream

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as part of this session: cancelled when the session ends."""
        if self._tasks is None:
            coro.close()
            raise RuntimeError("session is not running")
        task = self._tasks.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def run(self, *background: Coroutine[Any, Any, None]) -> None:
        """Serve until the transport closes or the session fails; then close every stream.

        `background` coroutines (keepalives, expiry watches) live exactly as long as the session.
        """
        self.wake_writer()  # our HELLO
        limit_unsent(self.transport)
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                # Messages flow from here on (those that came early first): a peer's OPEN needs
                # the task group to serve it in.
                self.transport.deliver_to(self._on_message, self._flush)
                watcher = tasks.create_task(self._watch_transport())
                self.spawn(self._probe_rtt())
                for coro in background:
                    self.spawn(coro)
                try:
                    await self._closed.wait()
                finally:
                    self._closed.set()
                    self._flush()  # a GOAWAY or an error frame the session queued last
                    watcher.cancel()
                    for task in list(self._background):
                        task.cancel()
                    for stream in list(self.streams.values()):
                        stream.error = stream.error or StreamError(ErrorCode.CANCEL, "session closed")
                        stream._fail_open()  # an `open` still waiting for its answer
                        stream._wake()
                    self.streams.clear()
                    self.starved.clear()
        finally:
            self._tasks = None
            if not self.hello.done():
                self.hello.set_exception(ConnectionError("session ended before HELLO"))
                self.hello.exception()  # retrieved: nobody may be waiting

    async def close(self) -> None:
        self._closed.set()
        self._flush()
        await self.transport.close()

    async def _probe_rtt(self) -> None:
        """PING now and then: the session tunes its stream windows to the round trip it measures."""
        try:
            await self.hello
        except ConnectionError:
            return
        pause = RTT_PROBE_FIRST
        for n in itertools.count():
            self.session.ping(b"rtt" + n.to_bytes(5, "big"))
            self.wake_writer()
            await asyncio.sleep(pause)
            pause = min(2 * pause, RTT_PROBE_MAX)

    async def _watch_transport(self) -> None:
        await self.transport.wait_closed()
        self._closed.set()

    def _on_message(self, message: bytes) -> None:
        if self._closed.is_set():
            return
        for event in self.session.receive(message):
            self._dispatch(event)
        if self.session.closed is not None:
            self._closed.set()

    def _dispatch(self, event: ev.Event) -> None:
        if isinstance(event, ev.DataReceived):
            stream = self.streams.get(event.stream_id)
            self.bytes_received += len(event.data)
            if stream is None:
                self.session.consumed(event.stream_id, len(event.data))
            else:
                stream._data(event.data)
        elif isinstance(event, ev.WindowOpened):
            if event.stream_id == 0:
                starved, self.starved = self.starved, set()
                for stream in starved:
                    stream._on_writable()
            elif (stream := self.streams.get(event.stream_id)) is not None:
                self.starved.discard(stream)
                stream._on_writable()
        elif isinstance(event, ev.StreamOpened):
            self._on_open(event)
        elif isinstance(event, ev.StreamAccepted):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream._accepted is not None and not stream._accepted.done():
                stream._accepted.set_result(None)
        elif isinstance(event, ev.StreamRejected | ev.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                self.starved.discard(stream)
                stream.release()
                stream.error = StreamError(event.code, event.reason)
                stream._fail_open()
                stream._wake()
        elif isinstance(event, ev.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._ended()
        elif isinstance(event, ev.Hello):
            if not self.hello.done():
                self.hello.set_result(event)
        else:
            if isinstance(event, ev.ConnectionFailed):
                log.warning("tunnel session failed", extra={"code": event.code.name, "reason": event.reason})
            if self.on_event:
                self.on_event(event)

    def _on_open(self, event: ev.StreamOpened) -> None:
        if self.handler is None or self._tasks is None:
            self.session.reject(event.stream_id, ErrorCode.REFUSED_STREAM, "this side accepts no streams")
            return
        stream = Stream(self, event.stream_id, event.target)
        self.streams[event.stream_id] = stream
        self._tasks.create_task(self._serve(stream))

    async def _serve(self, stream: Stream) -> None:
        assert self.handler is not None
        try:
            await self.handler(stream)
        except StreamError:
            pass
        except Exception:
            log.exception("stream handler failed", extra={"stream": stream.id})
            stream.reset(ErrorCode.INTERNAL_ERROR, "handler failed")
        finally:
            # A handler that attached a listener handed the stream to it; otherwise a stream whose
            # handler is done and whose peer finished is over.
            if stream.listener is None and stream.id in self.streams and stream.error is None and stream.eof:
                self.forget(stream.id)
