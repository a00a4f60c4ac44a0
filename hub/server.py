"""Running the hub: TLS material, uvicorn, and an in-process handle for tests and the demo."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from foundation import pki
from foundation.gate import Gate, GateCollector, serving_context
from foundation.webserver import gated_server
from hub import secrets
from hub.app import build_app
from hub.config import HubConfig
from hub.context import Hub, open_hub

log = logging.getLogger("kubearc.hub")


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path | None  # the CA clients should trust, when the hub made its own


async def ensure_tls(config: HubConfig, hub: Hub) -> TlsFiles:
    """Use the given serving certificate, or issue this replica's own from the hub's serving CA.

    The CA lives in the database (`hub.secrets.load_serving_ca`), so every replica's
    certificate verifies against the one `<state-dir>/tls/ca.crt` clients were given, and
    each replica keeps its own leaf key in its own state directory.
    """
    if config.tls_cert and config.tls_key:
        return TlsFiles(config.tls_cert, config.tls_key, None)
    directory = config.state_dir / "tls"
    serving_ca = await secrets.load_serving_ca(hub.sessions, hub.box, directory)
    names = ["localhost", "127.0.0.1", "::1"]
    host = config.url.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
    if host not in names:
        names.insert(0, host)
    if config.host not in names and config.host not in ("0.0.0.0", "::"):
        names.append(config.host)
    ca, cert, key = pki.ensure_serving_pair(directory, names, ca=serving_ca)
    return TlsFiles(cert, key, ca)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets created that way, and
    # without it a response split in two writes waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def api_gate(config: HubConfig, tls: TlsFiles, app: Starlette) -> Gate:
    """The API port's admission: the hub's certificate, the configured limits, counts on /metrics."""
    gate = Gate(config.limits, serving_context(tls.cert, tls.key), name="hub api")
    app.state.registry.register(GateCollector(gate, "kubearc_hub"))
    return gate


def uvicorn_server(app: object, gate: Gate, embedded: bool = False) -> uvicorn.Server:
    """The hub's uvicorn behind `gate`; `embedded`: one that leaves the process's signals to its caller."""
    return gated_server(app, gate, embedded=embedded, timeout_graceful_shutdown=5)


async def serve(
    config: HubConfig,
    extra_routes: Callable[[Hub], list[BaseRoute]] | None = None,
    on_ready: Callable[[Hub, TlsFiles], None] | None = None,
    sock: socket.socket | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the hub until cancelled, signalled or (given `stop`) until `stop` is set.

    With `stop` the caller owns the process's signals (uvicorn installs none), so it can
    shut other parts down first, the relay's drain before the API that verifies renewals.
    """
    sock = sock or bind(config.host, config.port)
    hub = await open_hub(config)
    try:
        tls = await ensure_tls(config, hub)
        app = build_app(hub, extra_routes(hub) if extra_routes else None)
        server = uvicorn_server(app, api_gate(config, tls, app), embedded=stop is not None)
        if on_ready:
            on_ready(hub, tls)
        async with asyncio.TaskGroup() as tasks:
            serving = tasks.create_task(_serve(app, server, sock))
            if stop is not None:
                waiting = tasks.create_task(stop.wait())
                await asyncio.wait([serving, waiting], return_when=asyncio.FIRST_COMPLETED)
                server.should_exit = True
                waiting.cancel()
    finally:
        await hub.close()


async def _serve(app: Starlette, server: uvicorn.Server, sock: socket.socket) -> None:
    """uvicorn on `sock`, with the heartbeat writer beside it for exactly as long."""
    async with asyncio.TaskGroup() as tasks:
        writer = tasks.create_task(app.state.heartbeats.run())
        try:
            await server.serve(sockets=[sock])
        finally:
            writer.cancel()


class HubThread:
    """A hub served over real HTTPS from a background thread (tests, `kubearc demo`).

    The socket is bound before the thread starts, so `url` is valid at once.
    """

    def __init__(self, config: HubConfig, extra_routes: Callable[[Hub], list[BaseRoute]] | None = None):
        self.sock = bind(config.host, config.port)
        config.port = self.sock.getsockname()[1]
        self.config = config
        self.extra_routes = extra_routes
        self.hub: Hub | None = None
        self.tls: TlsFiles | None = None
        self.gate: Gate | None = None
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="hub", daemon=True)

    @property
    def url(self) -> str:
        return self.config.url

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        hub = await open_hub(self.config)
        try:
            self.tls = await ensure_tls(self.config, hub)
            app = build_app(hub, self.extra_routes(hub) if self.extra_routes else None)
            self.gate = api_gate(self.config, self.tls, app)
            self._server = uvicorn_server(app, self.gate)
            self.hub = hub
            task = asyncio.create_task(_serve(app, self._server, self.sock))
            while not self._server.started and not task.done():  # noqa: ASYNC110 - uvicorn has no started event
                await asyncio.sleep(0.01)
            self._ready.set()
            await task
        finally:
            await hub.close()

    def start(self, timeout: float = 30) -> HubThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("hub did not start")
        if self._error:
            raise RuntimeError(f"hub failed to start: {self._error}") from self._error
        return self

    def stop(self, timeout: float = 15) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(timeout)
        self.sock.close()
