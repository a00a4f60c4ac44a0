"""The client proxy (`kubearc proxy`): a loopback listener whose connections become tunnel streams.

kubectl connects to 127.0.0.1:PORT; each accepted connection is one stream
through the relay to the cluster's agent and on to the apiserver. The proxy never
reads the bytes: kubectl's TLS ends at the real apiserver. It keeps one session
to the relay, reconnects with backoff, and renews its relay credential in band
before it expires so open watches and exec sessions survive.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from websockets.asyncio.client import connect

from foundation.retry import RetryPolicy
from proxy.mux import Mux
from proxy.pipe import SocketPipe
from proxy.protocol import events as ev
from proxy.protocol.session import Role, Session, Settings
from proxy.stream import StreamError
from proxy.wsconn import DirectClientConnection

log = logging.getLogger("kubearc.proxy")


@dataclass(frozen=True)
class Credential:
    relay_url: str
    token: str
    expires_at: float  # epoch seconds
    ca_pem: bytes  # the cluster's apiserver CA, for the kubeconfig
    tls_server_name: str


CredentialSource = Callable[[], Awaitable[Credential]]


@dataclass
class ClientProxy:
    credentials: CredentialSource
    port: int = 47011
    host: str = "127.0.0.1"
    relay_ca_file: str | None = None
    settings: Settings = field(default_factory=Settings)
    renew_margin: float = 0.25  # renew when this fraction of the credential's life is left
    backoff: RetryPolicy = field(default_factory=lambda: RetryPolicy(base=0.3, cap=15.0, deadline=None))
    open_wait: float = 15.0

    def __post_init__(self) -> None:
        self.credential: Credential | None = None
        self._mux: Mux | None = None
        self._up = asyncio.Event()
        self.renewals = 0

    @property
    def mux(self) -> Mux | None:
        """The live relay session, if any (introspection)."""
        return self._mux

    async def run(
        self, ready: Callable[[int], None] | None = None, stop: asyncio.Event | None = None
    ) -> None:
        """Listen on loopback and keep a relay session until `stop`."""
        stop = stop or asyncio.Event()
        self.credential = await self.credentials()
        loop = asyncio.get_running_loop()
        openers: set[asyncio.Task[None]] = set()
        async with asyncio.TaskGroup() as tasks:

            def accepted() -> SocketPipe:
                # Opening the stream is the only step that waits (for the relay's answer); the
                # pipe itself runs on callbacks.
                pipe = SocketPipe()
                task = tasks.create_task(self._open_for(pipe))
                openers.add(task)
                task.add_done_callback(openers.discard)
                return pipe

            server = await loop.create_server(accepted, self.host, self.port, backlog=1024)
            self.port = server.sockets[0].getsockname()[1]
            async with server:
                keeper = tasks.create_task(self._keep_session())
                if ready:
                    ready(self.port)
                await stop.wait()
                server.close()
                for task in [keeper, *openers]:
                    task.cancel()

    async def _open_for(self, pipe: SocketPipe) -> None:
        """Open the tunnel stream for one accepted connection and join the two."""
        try:
            async with asyncio.timeout(self.open_wait):
                await self._up.wait()
                if self._mux is None:
                    raise ConnectionError("relay session went away")
                stream = await self._mux.open({"kind": "apiserver"})
        except (TimeoutError, StreamError, ConnectionError) as exc:
            log.warning("cannot open a tunnel stream", extra={"error": str(exc) or type(exc).__name__})
            if pipe.transport is not None:
                pipe.transport.close()
            return
        pipe.attach(stream)

    async def _keep_session(self) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await self._session()
            except Exception as exc:
                log.warning("relay session ended: %s: %s", type(exc).__name__, exc)
            self._up.clear()
            self._mux = None
            failures = 1 if time.monotonic() - started > 30 else failures + 1
            await asyncio.sleep(self.backoff.pause(failures))

    async def _session(self) -> None:
        assert self.credential is not None
        if self.credential.expires_at - time.time() < 30:
            self.credential = await self.credentials()
        tls = ssl.create_default_context(cafile=self.relay_ca_file) if self.relay_ca_file else None
        async with connect(
            self.credential.relay_url,
            ssl=tls or ssl.create_default_context(),
            additional_headers={"Authorization": f"Bearer {self.credential.token}"},
            compression=None,
            max_size=2 * 1024 * 1024,
            ping_interval=None,
            open_timeout=10,
            write_limit=256 * 1024,
            proxy=True,
            create_connection=DirectClientConnection,
        ) as ws:
            assert isinstance(ws, DirectClientConnection)
            mux = Mux(Session(Role.DIALLER, self.settings), ws)

            def on_event(event: ev.Event) -> None:
                if isinstance(event, ev.RenewRejected):
                    log.error("relay refused the renewed credential", extra={"reason": event.reason})

            mux.on_event = on_event
            self._mux = mux
            await mux.run(self._mark_up(mux), self._renew(mux))

    async def _mark_up(self, mux: Mux) -> None:
        await mux.hello
        self._up.set()

    async def _renew(self, mux: Mux) -> None:
        """Fetch a new credential before the current one expires and hand it to the relay in band."""
        while True:
            assert self.credential is not None
            left = self.credential.expires_at - time.time()
            await asyncio.sleep(max(1.0, left * (1 - self.renew_margin)))
            try:
                self.credential = await self.credentials()
            except Exception as exc:  # keep the session; the next attempt may work
                log.warning("cannot refresh the relay credential", extra={"error": str(exc)})
                continue
            mux.session.renew({"token": self.credential.token})
            mux.wake_writer()
            self.renewals += 1
