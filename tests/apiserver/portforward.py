"""`kubectl port-forward`: SPDY tunneled in a websocket, and the older plain-websocket protocol.

kubectl 1.37 asks for the websocket subprotocol `SPDY/3.1+portforward.k8s.io`
and speaks the kubelet's `portforward.k8s.io` protocol over SPDY inside it: for
every local connection it opens an error stream and a data stream (headers
`streamType`, `port`, `requestID`), waits for both replies, then copies bytes
on the data stream; the server reports a failure as text on the error stream
and ends both with FIN when the pod side closes. Older clients speak the same
SPDY session directly on an upgraded connection (`spdy_upgrade.py`), so
`TunnelSession` only sees bytes in and out. The Python client instead
uses `v4.channel.k8s.io` with `?ports=`: channels 2i (data) and 2i+1 (error)
per port, each opened by a two-byte little-endian port number.

Where a pod port leads is the kubelet's business (`Kubelet.set_port_target`):
a real TCP address, or by default a built-in echo service.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.websockets import WebSocket

from tests.apiserver import spdy
from tests.apiserver.kubelet import Kubelet, PodRuntime

TUNNEL_PROTOCOL = "SPDY/3.1+portforward.k8s.io"
CHANNEL_PROTOCOL = "v4.channel.k8s.io"
PROTOCOLS = (TUNNEL_PROTOCOL, CHANNEL_PROTOCOL)
CHUNK = 64 * 1024


class Target:
    """One connection to a pod port: a real socket, or the echo service."""

    def __init__(self, reader: asyncio.StreamReader | None, writer: asyncio.StreamWriter | None) -> None:
        self._reader, self._writer = reader, writer
        self._echo: asyncio.Queue[bytes] = asyncio.Queue(maxsize=32)

    @classmethod
    async def open(cls, kubelet: Kubelet, pod: PodRuntime, port: int) -> Target:
        address = kubelet.port_target(pod, port)
        if address is None:
            return cls(None, None)
        reader, writer = await asyncio.open_connection(*address)
        return cls(reader, writer)

    async def read(self) -> bytes:
        if self._reader is None:
            return await self._echo.get()
        return await self._reader.read(CHUNK)

    async def write(self, data: bytes) -> None:
        if self._writer is None:
            await self._echo.put(data)
            return
        self._writer.write(data)
        await self._writer.drain()

    async def write_eof(self) -> None:
        if self._writer is None:
            await self._echo.put(b"")
        elif self._writer.can_write_eof() and not self._writer.is_closing():
            self._writer.write_eof()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        elif self._echo.empty():
            self._echo.put_nowait(b"")


def _forward_error(pod: PodRuntime, port: str, problem: object) -> bytes:
    return (
        f"error forwarding port {port} to pod {pod.name}, uid {pod.uid}: "
        f"failed to connect to localhost:{port} inside namespace of pod {pod.name}: {problem}"
    ).encode()


@dataclass
class _Pair:
    """The error and data streams of one forwarded connection (one requestID)."""

    port: str
    error: int = 0
    data: int = 0
    target: Target | None = None
    pump: asyncio.Task[None] | None = None


Receiver = Callable[[], Awaitable[bytes | None]]  # the next bytes from the client; None once it is gone
Sender = Callable[[bytes], Awaitable[None]]


def websocket_receiver(ws: WebSocket) -> Receiver:
    """The bytes of a websocket's binary messages, as one stream (how spdystream treats them)."""

    async def receive() -> bytes | None:
        message = await ws.receive()
        return None if message["type"] == "websocket.disconnect" else message.get("bytes") or b""

    return receive


class TunnelSession:
    """The server end of one SPDY port-forward session, inside a websocket or on an upgraded connection."""

    def __init__(self, receive: Receiver, send: Sender, kubelet: Kubelet, pod: PodRuntime) -> None:
        self.receive, self._send, self.kubelet, self.pod = receive, send, kubelet, pod
        self.spdy = spdy.Connection()
        self.pairs: dict[str, _Pair] = {}
        self.streams: dict[int, _Pair] = {}
        self._lock = asyncio.Lock()

    async def send(self, frame: bytes) -> None:
        async with self._lock:
            await self._send(frame)

    async def run(self) -> None:
        try:
            while (data := await self.receive()) is not None:
                for frame in self.spdy.feed(data):
                    if not await self.handle(frame):
                        return
        finally:
            for pair in self.pairs.values():
                self._stop(pair)

    async def handle(self, f: spdy.Frame) -> bool:
        if f.type == spdy.SYN_STREAM:
            await self._open(f)
        elif f.type == 0:
            pair = self.streams.get(f.stream_id)
            if pair and f.stream_id == pair.data and pair.target is not None:
                if f.data:
                    await pair.target.write(f.data)
                if f.fin:
                    await pair.target.write_eof()
        elif f.type == spdy.RST_STREAM:
            pair = self.streams.pop(f.stream_id, None)
            if pair:
                self._stop(pair)
        elif f.type == spdy.PING:
            await self.send(self.spdy.ping(f.value))
        elif f.type == spdy.GOAWAY:
            return False
        return True

    async def _open(self, f: spdy.Frame) -> None:
        kind, request, port = f.header("streamtype"), f.header("requestid"), f.header("port")
        if kind not in ("error", "data") or not request:
            await self.send(self.spdy.rst_stream(f.stream_id, spdy.RST_PROTOCOL_ERROR))
            return
        await self.send(self.spdy.syn_reply(f.stream_id))
        pair = self.pairs.setdefault(request, _Pair(port))
        setattr(pair, kind, f.stream_id)
        self.streams[f.stream_id] = pair
        if pair.error and pair.data and pair.pump is None:
            await self._connect(pair)

    async def _connect(self, pair: _Pair) -> None:
        problem: object = None
        try:
            number = int(pair.port)
            if not 0 < number < 65536:
                raise ValueError(f"invalid port {pair.port!r}")
            pair.target = await Target.open(self.kubelet, self.pod, number)
        except (ValueError, OSError) as exc:
            problem = exc
        if problem is not None:
            await self.send(
                self.spdy.data(pair.error, _forward_error(self.pod, pair.port, problem), fin=True)
            )
            await self.send(self.spdy.data(pair.data, b"", fin=True))
            pair.pump = asyncio.create_task(asyncio.sleep(0))
            return
        pair.pump = asyncio.create_task(self._pump(pair))

    async def _pump(self, pair: _Pair) -> None:
        """Pod port → client, then FIN on the data stream and the (empty) error stream."""
        assert pair.target is not None
        with contextlib.suppress(Exception):
            while chunk := await pair.target.read():
                await self.send(self.spdy.data(pair.data, chunk))
            await self.send(self.spdy.data(pair.data, b"", fin=True))
            await self.send(self.spdy.data(pair.error, b"", fin=True))

    def _stop(self, pair: _Pair) -> None:
        if pair.target is not None:
            pair.target.close()
        if pair.pump is not None and not pair.pump.done():
            pair.pump.cancel()


async def run_channels(ws: WebSocket, kubelet: Kubelet, pod: PodRuntime, ports: list[int]) -> None:
    """The plain-websocket protocol: one connection per requested port for the websocket's lifetime."""
    send_lock = asyncio.Lock()

    async def send(channel: int, data: bytes) -> None:
        async with send_lock:
            await ws.send_bytes(bytes([channel]) + data)

    targets: list[Target | None] = []
    for i, port in enumerate(ports):
        await send(2 * i, port.to_bytes(2, "little"))
        await send(2 * i + 1, port.to_bytes(2, "little"))
        try:
            targets.append(await Target.open(kubelet, pod, port))
        except OSError as exc:
            targets.append(None)
            await send(2 * i + 1, _forward_error(pod, str(port), exc))

    async def pump(i: int, target: Target) -> None:
        with contextlib.suppress(Exception):
            while chunk := await target.read():
                await send(2 * i, chunk)

    pumps = [asyncio.create_task(pump(i, t)) for i, t in enumerate(targets) if t is not None]
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes") or b""
            if len(data) > 1 and data[0] % 2 == 0 and data[0] // 2 < len(targets):
                target = targets[data[0] // 2]
                if target is not None:
                    await target.write(data[1:])
    finally:
        for t in targets:
            if t is not None:
                t.close()
        for p in pumps:
            p.cancel()
