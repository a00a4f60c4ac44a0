"""Which websocket server should carry the relay's data path: ASGI (uvicorn) or websockets itself?

The relay moves binary messages between two websockets. This measures exactly
that cost on each server stack, in one run, over TLS on loopback: a client sends
N binary messages of a given size and the server sends each one straight back
(as the relay forwards a frame from one session to the other). Reported: MiB/s
for bulk (64 KiB) messages and messages/s plus p50/p99 round trip for small
(64-byte) messages. Each server runs in its own process so the client does not
share its event loop.

    .venv/bin/python -m loadtest.bench_relay_transport [--seconds 5]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import ssl
import statistics
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

from foundation import pki
from loadtest import Parser

SERVERS = ("websockets", "uvicorn-asgi")


def _tls(directory: Path) -> tuple[Path, Path, Path]:
    return pki.ensure_serving_pair(directory, ["localhost", "127.0.0.1"], "bench CA")


def _serve_websockets(port: int, cert: str, key: str) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        async with serve(echo, "127.0.0.1", port, ssl=ctx, compression=None, max_size=2**21) as server:
            await server.serve_forever()

    _run(main())


def _serve_asgi(port: int, cert: str, key: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                await ws.send_bytes(await ws.receive_bytes())
        except WebSocketDisconnect:
            pass

    app = Starlette(routes=[WebSocketRoute("/", echo)])
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        ssl_certfile=cert,
        ssl_keyfile=key,
        log_level="warning",
        ws="websockets-sansio" if _has_sansio() else "websockets",
        ws_per_message_deflate=False,
        ws_max_size=2**21,
        access_log=False,
    )


def _has_sansio() -> bool:
    import importlib.util

    return importlib.util.find_spec("uvicorn.protocols.websockets.websockets_sansio_impl") is not None


def _run(main: object) -> None:
    try:
        import uvloop

        uvloop.run(main)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(main)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _bulk(url: str, ctx: ssl.SSLContext, seconds: float) -> float:
    payload = os.urandom(64 * 1024)
    async with connect(url, ssl=ctx, compression=None, max_size=2**21) as ws:
        sent = received = 0
        window = 32  # messages in flight, as a credit window would allow
        start = time.perf_counter()
        deadline = start + seconds
        while sent < window:
            await ws.send(payload)
            sent += 1
        while time.perf_counter() < deadline:
            await ws.recv()
            received += 1
            await ws.send(payload)
            sent += 1
        for _ in range(sent - received):
            await ws.recv()
            received += 1
        elapsed = time.perf_counter() - start
    return received * len(payload) / elapsed / 2**20


async def _small(url: str, ctx: ssl.SSLContext, seconds: float) -> tuple[float, float, float]:
    payload = b"x" * 64
    times: list[float] = []
    async with connect(url, ssl=ctx, compression=None) as ws:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await ws.send(payload)
            await ws.recv()
            times.append(time.perf_counter() - t0)
    times.sort()
    return len(times) / seconds, statistics.median(times) * 1000, times[int(len(times) * 0.99)] * 1000


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ca, cert, key = _tls(Path(tmp))
        ctx = ssl.create_default_context(cafile=str(ca))
        rows = []
        for name in SERVERS:
            port = _free_port()
            target = _serve_websockets if name == "websockets" else _serve_asgi
            proc = multiprocessing.get_context("spawn").Process(
                target=target, args=(port, str(cert), str(key))
            )
            proc.start()
            try:
                url = f"wss://localhost:{port}/"
                for _ in range(100):
                    try:
                        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                            break
                    except OSError:
                        time.sleep(0.1)
                bulk = asyncio.run(_bulk(url, ctx, args.seconds))
                rate, p50, p99 = asyncio.run(_small(url, ctx, args.seconds))
                rows.append((name, bulk, rate, p50, p99))
            finally:
                proc.terminate()
                proc.join(10)
    print(f"{'server':<14} {'bulk MiB/s':>11} {'small msg/s':>12} {'p50 ms':>8} {'p99 ms':>8}")
    for name, bulk, rate, p50, p99 in rows:
        print(f"{name:<14} {bulk:>11.1f} {rate:>12.0f} {p50:>8.3f} {p99:>8.3f}")
    base = rows[0]
    for name, bulk, rate, _, _ in rows[1:]:
        print(f"{name} vs {base[0]}: bulk {bulk / base[1]:.2f}x, small {rate / base[2]:.2f}x")


if __name__ == "__main__":
    main()
