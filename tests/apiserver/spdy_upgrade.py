"""Direct SPDY/3.1 upgrades: exec, attach and port-forward the way older clients ask for them.

kubectl before the websocket protocols (or with `KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`,
`KUBECTL_PORT_FORWARD_WEBSOCKETS=false`) sends `Upgrade: SPDY/3.1` with the
sub-protocols it speaks in `X-Stream-Protocol-Version`, then runs an SPDY session
on the connection. No ASGI server passes such an upgrade on, so `front.py`
routes it here before uvicorn sees it. The checks are the websocket path's
(`upgrades.check`, `upgrades.validate`), and a failure is a `Status` response,
which kubectl prints. After the 101:

- port-forward (`portforward.k8s.io`) is the SPDY session kubectl otherwise
  tunnels in a websocket: `portforward.TunnelSession` on the raw bytes;
- exec and attach (`v4.channel.k8s.io`) use one SPDY stream per standard stream,
  named by its `streamType` header (error, stdin, stdout, stderr, resize); stdin
  EOF is the client's FIN on the stdin stream, and the error stream carries the
  final v1 Status (exit code included) before every stream is ended with FIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import h11
from starlette.datastructures import QueryParams

from tests.apiserver import audit, errors, portforward, remotecommand, spdy, upgrades, webhooks
from tests.apiserver.app import Seen

if TYPE_CHECKING:
    from tests.apiserver.app import ApiServerState

REMOTECOMMAND = "v4.channel.k8s.io"
PORTFORWARD = "portforward.k8s.io"
CHUNK = 32 * 1024
LINGER = 5.0  # seconds to wait for the client to hang up after the session ends


def spdy_request(head: bytes) -> h11.Request | None:
    """The request, if this HTTP/1.1 head asks for an SPDY/3.1 upgrade."""
    conn = h11.Connection(h11.SERVER)
    try:
        conn.receive_data(head)
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    upgrade = b",".join(v for n, v in event.headers if n == b"upgrade").lower()
    return event if b"spdy/3.1" in upgrade else None


class _Link:
    """The upgraded connection: bytes, and SPDY frames parsed from them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.codec = spdy.Connection()
        self.frames: deque[spdy.Frame] = deque()

    async def receive(self) -> bytes | None:
        try:
            return await self.reader.read(64 * 1024) or None
        except (ConnectionError, OSError):
            return None

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def frame(self) -> spdy.Frame | None:
        while not self.frames:
            data = await self.receive()
            if data is None:
                return None
            self.frames.extend(self.codec.feed(data))
        return self.frames.popleft()

    async def linger(self) -> None:
        """Say goodbye and let the client hang up first, so nothing it still sends meets a reset."""
        with contextlib.suppress(Exception):
            await self.send(self.codec.goaway(0))
            async with asyncio.timeout(LINGER):
                while await self.receive() is not None:
                    pass


class SpdyStreams:
    """exec/attach streams over SPDY (remotecommand v4): a `remotecommand.StdStreams`."""

    def __init__(self, link: _Link, *, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> None:
        self.link = link
        self.want_stdin, self.want_stdout, self.want_stderr, self.tty = stdin, stdout, stderr, tty
        self.ids: dict[str, int] = {}  # streamType → stream id
        self.stdin: asyncio.Queue[bytes] = asyncio.Queue(maxsize=64)
        self.stdin_open = stdin
        self.resizes: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        if not stdin:
            self.stdin.put_nowait(b"")

    def expected(self) -> set[str]:
        wanted = {"error", "stdin" if self.want_stdin else "", "stdout" if self.want_stdout else ""}
        wanted.add("resize" if self.tty else ("stderr" if self.want_stderr else ""))
        return wanted - {""}

    async def open(self) -> bool:
        """Accept the client's streams until every one the request named is there."""
        while not self.expected() <= self.ids.keys():
            frame = await self.link.frame()
            if frame is None or not await self._handle(frame, None):
                return False
        return True

    async def _handle(self, f: spdy.Frame, on_stdin: Any) -> bool:
        """Act on one client frame; False once the client is leaving."""
        if f.type == spdy.SYN_STREAM:
            self.ids[f.header("streamtype")] = f.stream_id
            await self.send_frame(self.link.codec.syn_reply(f.stream_id))
        elif f.type == 0 and f.stream_id == self.ids.get("stdin") and self.stdin_open:
            if f.data:
                await (on_stdin(f.data) if on_stdin else self.stdin.put(f.data))
            if f.fin:
                await self._stdin_eof(on_stdin)
        elif f.type == 0 and f.stream_id == self.ids.get("resize"):
            for line in f.data.splitlines():
                with contextlib.suppress(ValueError):
                    self.resizes.append(json.loads(line))
        elif f.type == spdy.RST_STREAM and f.stream_id == self.ids.get("stdin") and self.stdin_open:
            await self._stdin_eof(on_stdin)
        elif f.type == spdy.PING:
            await self.send_frame(self.link.codec.ping(f.value))
        elif f.type == spdy.GOAWAY:
            return False
        return True

    async def _stdin_eof(self, on_stdin: Any) -> None:
        self.stdin_open = False
        if not on_stdin:
            await self.stdin.put(b"")

    async def send_frame(self, frame: bytes) -> None:
        if self.gone.is_set():
            return
        try:
            await self.link.send(frame)
        except Exception:  # the client went away mid-write: the reader notices too
            self.gone.set()

    async def _data(self, kind: str, data: bytes, fin: bool = False) -> None:
        stream = self.ids.get(kind)
        if stream is None:
            return
        for start in range(0, len(data), CHUNK):
            last = start + CHUNK >= len(data)
            await self.send_frame(spdy.Connection.data(stream, data[start : start + CHUNK], fin and last))
        if fin and not data:
            await self.send_frame(spdy.Connection.data(stream, b"", fin=True))

    # -- remotecommand.StdStreams -----------------------------------------------------------------------

    async def read(self) -> bytes:
        return await self.stdin.get()

    async def out(self, data: bytes) -> None:
        if self.want_stdout and data:
            await self._data("stdout", data)

    async def err(self, data: bytes) -> None:
        if data and (self.want_stderr or self.tty):
            await self._data("stdout" if self.tty else "stderr", data)

    async def pump(self, on_stdin: Any = None) -> None:
        try:
            while (frame := await self.link.frame()) is not None:
                if not await self._handle(frame, on_stdin):
                    break
        finally:
            self.gone.set()
            if self.stdin_open and not on_stdin and not self.stdin.full():
                self.stdin.put_nowait(b"")

    async def finish(self, status: dict[str, Any]) -> None:
        await self._data("stdout", b"", fin=True)
        await self._data("stderr", b"", fin=True)
        await self._data("error", json.dumps(status).encode(), fin=True)


def _response(code: int, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {code} {http.HTTPStatus(code).phrase}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def serve(
    state: ApiServerState, request: h11.Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer one SPDY upgrade request and run its session to the end."""
    raw_path, _, query = request.target.partition(b"?")
    path = unquote(raw_path.decode("ascii"))
    headers = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in request.headers]
    state.seen.append(Seen("1.1", request.method.decode("ascii"), path, "SPDY/3.1"))
    link = _Link(reader, writer)
    kubelet = state.kubelet
    assert kubelet is not None
    try:
        authorization = next((v for n, v in headers if n == "authorization"), "")
        method = request.method.decode("ascii")
        await webhooks.admit(state, method, path, query.decode("latin-1"), authorization, upgrade=True)
        audit.admit(state, method, path, headers, websocket=False)
        target = upgrades.check(state, path, authorization)
        versions = [v for n, v in headers if n == "x-stream-protocol-version"]
        offered = [p.strip() for v in versions for p in v.split(",") if p.strip()]
        supported = PORTFORWARD if target.kind == "portforward" else REMOTECOMMAND
        if supported not in offered:
            raise errors.bad_request(
                f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                f"server accepts [{supported}]"
            )
        session = upgrades.validate(state, target, QueryParams(query.decode("latin-1")))
    except errors.StatusError as exc:
        body = json.dumps(exc.body()).encode()
        kind = {"Content-Type": "application/json", "Content-Length": str(len(body)), "Connection": "close"}
        with contextlib.suppress(Exception):
            await link.send(_response(exc.code, kind, body))
        writer.close()
        return
    upgraded = {"Connection": "Upgrade", "Upgrade": "SPDY/3.1", "X-Stream-Protocol-Version": supported}
    try:
        await link.send(_response(101, upgraded))
        if session.kind == "portforward":
            await portforward.TunnelSession(link.receive, link.send, kubelet, session.runtime).run()
            return
        assert session.container is not None
        streams = SpdyStreams(link, **session.flags)
        if not await streams.open():
            return
        if session.kind == "exec":
            await remotecommand.run_exec(streams, session.command, session.container)
        else:
            await remotecommand.run_attach(streams, kubelet, session.container)
        await link.linger()
    except (ConnectionError, spdy.ProtocolError):
        pass
    finally:
        writer.close()


class _Connection:
    """What uvicorn's graceful shutdown closes (it calls `shutdown()` on every open connection)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def shutdown(self) -> None:
        self.writer.close()


def protocol(
    state: ApiServerState, request: h11.Request, rest: bytes, server_state: Any
) -> asyncio.StreamReaderProtocol:
    """The protocol that takes over the connection: streams for `serve`, in a task uvicorn tracks."""
    reader = asyncio.StreamReader()

    def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if rest:
            reader.feed_data(rest)
        task = asyncio.get_running_loop().create_task(serve(state, request, reader, writer))
        connection = _Connection(writer)
        server_state.tasks.add(task)
        server_state.connections.add(connection)
        task.add_done_callback(server_state.tasks.discard)
        task.add_done_callback(lambda _: server_state.connections.discard(connection))

    return asyncio.StreamReaderProtocol(reader, connected)
