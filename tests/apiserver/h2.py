"""HTTP/2 for the stand-in: the ASGI app served over h2 (the sans-I/O `h2` library), as a real apiserver is.

kubectl (Go's net/http) negotiates h2 through ALPN whenever the server offers it,
then sends every ordinary request, watches and followed logs included, as
streams of one connection; only upgrades (websocket, SPDY) take HTTP/1.1
connections of their own. uvicorn speaks HTTP/1.1 only, so `front.py` hands h2
connections here. Each request stream runs the app in its own task. Response
DATA waits for the peer's flow-control windows and request bodies are credited
back as the app reads them, so neither side can flood the other. A reset stream
or a lost connection is an `http.disconnect` (Starlette then ends a streaming
response such as a watch).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import FlowControlError, ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings

# RFC 9113 8.2.2: connection-specific headers must not appear in HTTP/2 messages.
CONNECTION_HEADERS = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
STREAM_WINDOW = 1 << 20  # request-body credit per stream
CONNECTION_WINDOW = 16 << 20
MAX_STREAMS = 250  # Go's HTTP/2 server default
log = logging.getLogger(__name__)

App = Any  # an ASGI application
Message = dict[str, Any]


class _Stream:
    """One request and its response: the app's `receive` and `send` for that stream."""

    def __init__(self, conn: H2Protocol, stream_id: int, scope: dict[str, Any]) -> None:
        self.conn, self.id, self.scope = conn, stream_id, scope
        self.body: deque[tuple[bytes, int]] = deque()  # (data, flow-controlled size) not yet read
        self.ended = False  # the client finished the request body
        self.eof_given = False  # ... and the app has seen that
        self.closed = False  # reset by the client, or the connection is gone
        self.started = self.complete = False
        self.changed = asyncio.Event()

    def wake(self) -> None:
        self.changed.set()

    async def receive(self) -> Message:
        while True:
            if self.body or (self.ended and not self.eof_given):
                data, size = self.body.popleft() if self.body else (b"", 0)
                more = bool(self.body) or not self.ended
                self.eof_given = not more
                self.conn.credit(self.id, size)
                return {"type": "http.request", "body": data, "more_body": more}
            if self.closed or self.complete:
                return {"type": "http.disconnect"}
            self.changed.clear()
            await self.changed.wait()

    async def send(self, message: Message) -> None:
        if self.closed:
            return  # as uvicorn does: the app learns of the disconnect from `receive`
        if message["type"] == "http.response.start":
            self.started = True
            headers = [(b":status", str(message["status"]).encode())]
            headers += [
                (name.lower(), value)
                for name, value in message.get("headers", [])
                if name.lower() not in CONNECTION_HEADERS
            ]
            self._frame(lambda: self.conn.h2.send_headers(self.id, headers))
        elif message["type"] == "http.response.body":
            body = b"" if self.scope["method"] == "HEAD" else message.get("body", b"")
            await self.conn.send_data(self, body)
            if not message.get("more_body", False) and not self.closed:
                self._frame(lambda: self.conn.h2.end_stream(self.id))
                self.complete = True
                self.wake()

    def _frame(self, build: Callable[[], None]) -> None:
        """Queue a frame and send it; a stream the client has reset meanwhile is just closed."""
        try:
            build()
        except (StreamClosedError, ProtocolError):
            self.closed = True
            return
        self.conn.flush()


class H2Protocol(asyncio.Protocol):
    """One HTTP/2 connection (TLS already done, ALPN said h2)."""

    def __init__(self, app: App, server_state: Any, app_state: dict[str, Any]) -> None:
        self.app, self.server_state, self.app_state = app, server_state, app_state
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.streams: dict[int, _Stream] = {}
        self.transport: asyncio.Transport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._window = asyncio.Event()  # replaced each time the peer grants credit
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None

    # -- the transport's side --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server = transport.get_extra_info("sockname")[:2]
        self.client = transport.get_extra_info("peername")[:2]
        self.server_state.connections.add(self)
        self.h2.local_settings = Settings(  # in force at once: they go out in the first SETTINGS frame
            client=False,
            initial_values={
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                SettingCodes.MAX_HEADER_LIST_SIZE: H2Connection.DEFAULT_MAX_HEADER_LIST_SIZE,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - self.h2.inbound_flow_control_window)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:
            log.info("closing an HTTP/2 connection after a protocol error: %s", exc)
            self.flush()
            self.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self._start(event)
            elif isinstance(event, DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is None or stream.complete:
                    self.credit(event.stream_id, event.flow_controlled_length)
                else:
                    stream.body.append((event.data, event.flow_controlled_length))
                    stream.wake()
            elif isinstance(event, StreamEnded):
                if stream := self.streams.get(event.stream_id):
                    stream.ended = True
                    stream.wake()
            elif isinstance(event, StreamReset):
                if stream := self.streams.get(event.stream_id):
                    stream.closed = True
                    stream.wake()
                self._granted()
            elif isinstance(event, WindowUpdated | RemoteSettingsChanged):
                self._granted()
            elif isinstance(event, ConnectionTerminated):
                self.close()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        for stream in self.streams.values():
            stream.closed = True
            stream.wake()
        self._granted()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: GOAWAY, then close (streams still open see a disconnect)."""
        if self.transport is not None and not self.transport.is_closing():
            self.h2.close_connection()
            self.flush()
        self.close()

    # -- helpers for the streams -----------------------------------------------------------------------

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def credit(self, stream_id: int, size: int) -> None:
        """Hand request-body credit back once the app has read the data."""
        if size and not (self.transport is None or self.transport.is_closing()):
            self.h2.acknowledge_received_data(size, stream_id)
            self.flush()

    def _granted(self) -> None:
        self._window.set()
        self._window = asyncio.Event()

    async def send_data(self, stream: _Stream, data: bytes) -> None:
        """Send `data` on the stream in frames the peer's windows allow, waiting for credit as needed."""
        view = memoryview(data)
        while view and not stream.closed:
            granted = self._window
            try:
                size = min(self.h2.local_flow_control_window(stream.id), self.h2.max_outbound_frame_size)
                if size > 0:
                    self.h2.send_data(stream.id, bytes(view[:size]))
                    view = view[size:]
                    self.flush()
            except (StreamClosedError, FlowControlError, ProtocolError):
                stream.closed = True
                return
            if size <= 0:
                await granted.wait()
            elif not self._writable.is_set():
                await self._writable.wait()

    def _start(self, event: RequestReceived) -> None:
        pseudo = {name: value for name, value in event.headers if name.startswith(b":")}
        headers = [(name, value) for name, value in event.headers if not name.startswith(b":")]
        if b":authority" in pseudo and not any(name == b"host" for name, _ in headers):
            headers.insert(0, (b"host", pseudo[b":authority"]))
        raw_path, _, query = pseudo.get(b":path", b"/").partition(b"?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},  # 2.3: Starlette watches for disconnects
            "http_version": "2",
            "method": pseudo.get(b":method", b"GET").decode("ascii"),
            "scheme": "https",
            "path": unquote(raw_path.decode("ascii")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "server": self.server,
            "client": self.client,
            "state": dict(self.app_state),
            "extensions": {},
        }
        stream = _Stream(self, event.stream_id, scope)
        self.streams[event.stream_id] = stream
        task = asyncio.get_running_loop().create_task(self._run(stream))
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)

    async def _run(self, stream: _Stream) -> None:
        try:
            await self.app(stream.scope, stream.receive, stream.send)
        except Exception:
            log.exception("the app failed on HTTP/2 stream %d", stream.id)
        finally:
            if not (stream.closed or stream.complete):
                if stream.started:
                    self._reset(stream.id)
                else:
                    await stream.send({"type": "http.response.start", "status": 500, "headers": []})
                    await stream.send({"type": "http.response.body", "body": b"Internal Server Error"})
            self.streams.pop(stream.id, None)

    def _reset(self, stream_id: int) -> None:
        try:
            self.h2.reset_stream(stream_id, ErrorCodes.INTERNAL_ERROR)
        except (StreamClosedError, ProtocolError):
            return
        self.flush()
