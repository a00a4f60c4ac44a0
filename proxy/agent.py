"""The clusterconnect-agent: dials out to the relay and joins each stream to the apiserver.

Passthrough mode: every stream becomes one TCP connection to the apiserver and
bytes flow untouched, so TLS runs end to end from kubectl to the apiserver.

The agent keeps its session up by itself: exponential backoff with full jitter
and a cap between attempts, PING liveness (a wedged connection is dropped, not
waited on), a fresh session as soon as the relay says GOAWAY (old streams drain
on the old one), and in-band renewal of its credential so open streams never
notice a token expiring.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from proxy.protocol.frames import ErrorCode
from proxy.protocol.session import Role, Session, Settings
from proxy.stream import Stream
from proxy.wsconn import DirectClientConnection

log = logging.getLogger("kubearc.connect")

TokenSource = Callable[[], Awaitable[str]]


@dataclass
class ConnectAgent:
    relay_url: str  # wss://relay/relay/v1/agent
    token: TokenSource  # a fresh agent token (signed with the identity key)
    apiserver: tuple[str, int]
    ca_file: str | None = None  # trust for the relay's certificate
    settings: Settings = field(default_factory=Settings)
    ping_interval: float = 10.0
    ping_timeout: float = 20.0
    renew_interval: float = 120.0
    connect_timeout: float = 10.0
    backoff: RetryPolicy = field(default_factory=lambda: RetryPolicy(base=0.5, cap=30.0, deadline=None))
    sessions_started: int = 0
    live: int = 0
    muxes: set[Mux] = field(default_factory=set, repr=False)  # live relay sessions (introspection)

    def _tls(self) -> ssl.SSLContext:
        return (
            ssl.create_default_context(cafile=self.ca_file) if self.ca_file else ssl.create_default_context()
        )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Keep a session to the relay until `stop` is set (or forever)."""
        stop = stop or asyncio.Event()
        failures = 0
        async with asyncio.TaskGroup() as sessions:
            while not stop.is_set():
                fresh = asyncio.Event()  # set when this session is up (resets the backoff)
                retire = asyncio.Event()  # set on GOAWAY: start the next session now
                task = sessions.create_task(self._session(fresh, retire))
                waits = [asyncio.ensure_future(e.wait()) for e in (retire, stop)]
                try:
                    done, _ = await asyncio.wait([task, *waits], return_when=asyncio.FIRST_COMPLETED)
                finally:  # also when run() is cancelled: no orphaned waiters
                    for w in waits:
                        w.cancel()
                if stop.is_set():
                    task.cancel()
                    break
                if task in done and not fresh.is_set():
                    failures += 1
                    pause = self.backoff.pause(failures)
                    log.warning("relay session failed; retrying", extra={"in_seconds": round(pause, 2)})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), pause)
                else:
                    failures = 0

    async def _session(self, fresh: asyncio.Event, retire: asyncio.Event) -> None:
        try:
            token = await self.token()
            async with connect(
                self.relay_url,
                ssl=self._tls(),
                additional_headers={"Authorization": f"Bearer {token}"},
                compression=None,
                max_size=2 * 1024 * 1024,
                ping_interval=None,
                open_timeout=self.connect_timeout,
                write_limit=256 * 1024,
                proxy=True,  # HTTPS_PROXY / NO_PROXY from the environment, as egress proxies need
                create_connection=DirectClientConnection,
            ) as ws:
                assert isinstance(ws, DirectClientConnection)
                await self._serve(ws, fresh, retire)
        except Exception as exc:  # every failure ends in a backoff and a new attempt
            log.warning("relay session ended: %s: %s", type(exc).__name__, exc)

    async def _serve(self, ws: DirectClientConnection, fresh: asyncio.Event, retire: asyncio.Event) -> None:
        session = Session(Role.DIALLER, self.settings)
        mux = Mux(session, ws, handler=self._open_apiserver)
        pongs: asyncio.Queue[bytes] = asyncio.Queue()

        def on_event(event: ev.Event) -> None:
            if isinstance(event, ev.PongReceived):
                pongs.put_nowait(event.payload)
            elif isinstance(event, ev.GoAwayReceived):
                log.info("relay asked to go away", extra={"reason": event.reason})
                retire.set()
            elif isinstance(event, ev.RenewRejected):
                log.error("relay refused the renewed credential", extra={"reason": event.reason})
                mux.spawn(mux.close())

        mux.on_event = on_event
        self.sessions_started += 1
        self.live += 1
        self.muxes.add(mux)
        try:
            await mux.run(self._up(mux, fresh), self._keepalive(mux, pongs), self._renew(mux))
        finally:
            self.muxes.discard(mux)
            self.live -= 1

    async def _up(self, mux: Mux, fresh: asyncio.Event) -> None:
        await mux.hello
        fresh.set()
        log.info("connected to the relay", extra={"relay": self.relay_url})

    async def _keepalive(self, mux: Mux, pongs: asyncio.Queue[bytes]) -> None:
        """A connection that stops answering PINGs is dead even if TCP says otherwise."""
        while True:
            await asyncio.sleep(self.ping_interval)
            nonce = time.monotonic_ns().to_bytes(8, "big")
            mux.session.ping(nonce)
            mux.wake_writer()
            try:
                async with asyncio.timeout(self.ping_timeout):
                    while await pongs.get() != nonce:
                        pass
            except TimeoutError:
                log.warning("relay stopped answering PINGs; reconnecting")
                await mux.close()
                return

    async def _renew(self, mux: Mux) -> None:
        while True:
            await asyncio.sleep(self.renew_interval)
            mux.session.renew({"token": await self.token()})
            mux.wake_writer()

    async def _open_apiserver(self, stream: Stream) -> None:
        host, port = self.apiserver
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, pipe = await loop.create_connection(SocketPipe, host, port)
        except (OSError, TimeoutError) as exc:
            stream.mux.refuse(stream, ErrorCode.CONNECT_FAILED, f"apiserver {host}:{port}: {exc}")
            return
        stream.mux.accept(stream)
        pipe.attach(stream)
