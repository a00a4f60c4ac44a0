"""The asyncio layer over a tunnel `Session`: callbacks in, one flush out, many streams.

The mux is the only object that touches its sans-I/O `Session`, the way
websockets' asyncio connection owns its protocol object: every method that
queues frames also sends them, so no caller ever has to wake a writer. Streams
reach it through `StreamOwner` (`proxy/stream.py`); the code above calls
`open`, `ping`, `goaway`, `renew`... and reads the figures it exposes.

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

from proxy.errors import SessionLost, StreamError
from proxy.protocol import events as ev
from proxy.protocol.frames import ErrorCode
from proxy.protocol.session import Session, SessionClosed
from proxy.stream import Stream

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
EventHandler = Callable[[ev.Event], None]


class Mux:
    """Runs one session over one transport until either side ends it."""

    def __init__(
        self,
        session: Session,
        transport: Transport,
        handler: StreamHandler | None = None,
        on_event: EventHandler | None = None,
    ) -> None:
        self.session = session  # read it for introspection; act through the mux's methods
        self.transport = transport
        self.handler = handler
        self.on_event = on_event  # what streams do not take: renewals, pongs, GOAWAY, failure
        self.streams: dict[int, Stream] = {}
        self.blocked = 0  # times a writer waited for credit (a metric)
        self.bytes_received = 0  # DATA payload bytes, both metrics
        self.bytes_sent = 0
        self.peak_stream_buffered = 0  # the most unconsumed bytes any one stream held (a metric)
        self._starved: set[Stream] = set()  # streams that ran out of credit: woken when it returns
        self._loop = asyncio.get_running_loop()
        self._flush_pending = False
        self._closed = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.hello: asyncio.Future[ev.Hello] = self._loop.create_future()

    # ---- figures ----------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes received on live streams and not yet consumed: at most the connection window."""
        return sum(stream.buffered for stream in self.streams.values())

    @property
    def rtt(self) -> float:
        """The path's round trip as the session measured it (0 until measured)."""
        return self.session.rtt

    @property
    def windows_grown(self) -> int:
        return self.session.windows_grown

    @property
    def failure(self) -> ev.ConnectionFailed | None:
        """Why the session failed, if it did."""
        return self.session.closed

    @property
    def usable(self) -> bool:
        """Up, and neither side said GOAWAY: new streams may be opened here."""
        s = self.session
        return self.hello.done() and s.closed is None and not s.going_away and not s.peer_going_away

    @property
    def closed(self) -> bool:
        """The session is over (or closing): nothing more goes through it."""
        return self._closed.is_set()

    @property
    def peer_going_away(self) -> bool:
        return self.session.peer_going_away

    # ---- session-level actions (each sends what it queued) -----------------------------------

    async def open(self, target: dict[str, Any], wait: float = 30) -> Stream:
        """Open a stream and wait (at most `wait` seconds) for the peer to accept it."""
        try:
            sid = self.session.open_stream(target)
        except SessionClosed as exc:
            raise StreamError(ErrorCode.REFUSED_STREAM, str(exc)) from None
        stream = Stream(self, sid, target, opening=True)
        self.streams[sid] = stream
        self._wake()
        await stream.accepted(wait)
        return stream

    def ping(self, payload: bytes) -> None:
        self.session.ping(payload)
        self._wake()

    def goaway(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Tell the peer to open no new streams here; open ones go on until they finish."""
        self.session.goaway(code, reason)
        self._wake()

    def renew(self, doc: dict[str, Any]) -> None:
        self.session.renew(doc)
        self._wake()

    def renew_ok(self, doc: dict[str, Any]) -> None:
        self.session.renew_ok(doc)
        self._wake()

    def renew_err(self, code: ErrorCode, reason: str) -> None:
        self.session.renew_err(code, reason)
        self._wake()

    def replicas(self, doc: dict[str, Any]) -> None:
        self.session.replicas(doc)
        self._wake()

    # ---- the stream owner (proxy.stream.StreamOwner) ----------------------------------------

    def stream_send(self, stream: Stream, data: bytes | memoryview) -> int:
        try:
            taken = self.session.send(stream.id, data)
        except SessionClosed as exc:
            raise StreamError(ErrorCode.STREAM_CLOSED, str(exc)) from None
        if taken:
            self.bytes_sent += taken
            self._wake()
        if taken < len(data):
            self._starved.add(stream)
            self.blocked += 1
        return taken

    def stream_capacity(self, stream: Stream) -> int:
        return self.session.send_capacity(stream.id)

    def stream_window(self, stream: Stream) -> int:
        return self.session.window(stream.id)

    def stream_fin(self, stream: Stream) -> None:
        self.session.send_fin(stream.id)
        self._wake()

    def stream_consumed(self, stream: Stream, size: int) -> None:
        self.session.consumed(stream.id, size)
        self._wake()

    def stream_accept(self, stream: Stream) -> None:
        self.session.accept(stream.id)
        self._wake()

    def stream_refuse(self, stream: Stream, code: ErrorCode, reason: str) -> None:
        self.session.reject(stream.id, code, reason)
        self._wake()

    def stream_reset(self, stream: Stream, code: ErrorCode, reason: str) -> None:
        self.session.reset(stream.id, code, reason)
        self._wake()

    def stream_done(self, stream: Stream) -> None:
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
        self._starved.discard(stream)

    # ---- running ----------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as part of this session: cancelled when the session ends."""
        if self._tasks is None:
            coro.close()
            raise SessionLost("session is not running")
        task = self._tasks.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def run(self, *background: Coroutine[Any, Any, None]) -> None:
        """Serve until the transport closes or the session fails; then close every stream.

        `background` coroutines (keepalives, expiry watches) live exactly as long as the session.
        """
        self._wake()  # our HELLO
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
                    ended = StreamError(ErrorCode.CANCEL, "session closed")
                    streams, self.streams = list(self.streams.values()), {}
                    self._starved.clear()
                    for stream in streams:
                        stream.on_failed(ended, credit=False)
        finally:
            self._tasks = None
            if not self.hello.done():
                self.hello.set_exception(SessionLost("session ended before HELLO"))
                self.hello.exception()  # retrieved: nobody may be waiting

    async def close(self) -> None:
        self._closed.set()
        self._flush()
        await self.transport.close()

    # ---- internals --------------------------------------------------------------------------

    def _wake(self) -> None:
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

    async def _probe_rtt(self) -> None:
        """PING now and then: the session tunes its stream windows to the round trip it measures."""
        try:
            await self.hello
        except SessionLost:
            return
        pause = RTT_PROBE_FIRST
        for n in itertools.count():
            self.ping(b"rtt" + n.to_bytes(5, "big"))
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
                stream.on_data(event.data)
                if stream.buffered > self.peak_stream_buffered:
                    self.peak_stream_buffered = stream.buffered
        elif isinstance(event, ev.WindowOpened):
            if event.stream_id == 0:
                starved, self._starved = self._starved, set()
                for stream in starved:
                    stream.on_writable()
            elif (stream := self.streams.get(event.stream_id)) is not None:
                self._starved.discard(stream)
                stream.on_writable()
        elif isinstance(event, ev.StreamOpened):
            self._on_open(event)
        elif isinstance(event, ev.StreamAccepted):
            if (stream := self.streams.get(event.stream_id)) is not None:
                stream.on_accepted()
        elif isinstance(event, ev.StreamRejected | ev.StreamReset):
            if (stream := self.streams.get(event.stream_id)) is not None:
                stream.on_failed(StreamError(event.code, event.reason))  # it leaves by `stream_done`
        elif isinstance(event, ev.StreamEnded):
            if (stream := self.streams.get(event.stream_id)) is not None:
                stream.on_eof()
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
            self._wake()
            return
        stream = Stream(self, event.stream_id, event.target)
        self.streams[event.stream_id] = stream
        self.spawn(self._serve(stream))  # cancelled with the session, like every task it owns

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
            if stream.listener is None and not stream.released and stream.error is None and stream.eof:
                stream.release()
