"""Tunnel safety on real parts: isolation, bounded memory, no leaks, restarts, renewal, trust, secrecy.

A real hub runs in its thread (real HTTPS, SQLite); the relay, connect agents and
client proxies run in this event loop over real wss with TLS, in front of small
TCP servers standing in for the apiserver's port. Nothing of kubearc is mocked:
where a test needs to look inside (buffered bytes, frames the relay switches) it
reads counters the parts expose or taps a transport without changing what flows.

Windows are small (256 KiB per stream, 1 MiB per connection) so that "bounded by
the windows" is a sharp claim.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import functools
import gc
import hashlib
import json
import os
import random
import socket
import ssl
import struct
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from foundation import pki, tokens
from foundation.retry import RetryPolicy
from foundation.wire import RELAY_AGENT_PATH as AGENT_PATH
from foundation.wire import RELAY_CLIENT_PATH as CLIENT_PATH
from hub.config import HubConfig
from proxy.agent import ConnectAgent
from proxy.client import ClientProxy, Credential
from proxy.mux import Mux, Transport
from proxy.protocol import frames as fr
from proxy.protocol.frames import ErrorCode, FrameType
from proxy.protocol.session import Role, Session, Settings
from proxy.relay import Relay
from proxy.relay_auth import AgentIdentity, HubAuth
from proxy.relay_server import RelayServer
from proxy.stream import Stream, StreamError
from proxy.wsconn import DirectClientConnection, DirectServerConnection
from tests.clusters import SUB, ConnectedCluster, connected
from tests.conftest import RunningHub, database

F = TypeVar("F", bound=Callable[..., Awaitable[None]])
WINDOW = 256 * 1024
CONN_WINDOW = 1024 * 1024
MAX_DATA = fr.DEFAULT_MAX_DATA
SETTINGS = Settings(initial_window=WINDOW, connection_window=CONN_WINDOW)
CLUSTER_USER = "Azure Arc Enabled Kubernetes Cluster User Role"
FAST = RetryPolicy(base=0.2, cap=1.0, deadline=None)
SERVER_NAME = "kubernetes.default.svc"


# ---- a hub ----------------------------------------------------------------------------------


@contextlib.contextmanager
def running_hub(directory: Path, **overrides: Any) -> Iterator[RunningHub]:
    """A hub on SQLite with the real clock (relay credentials expire in real time)."""
    with database("sqlite", directory) as url:
        hub = RunningHub(HubConfig(state_dir=directory / "state", port=0, database_url=url, **overrides))
        try:
            yield hub
        finally:
            hub.stop()


@pytest.fixture(scope="module")
def tunnel_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    with running_hub(tmp_path_factory.mktemp("tunnel-hub")) as hub:
        yield hub


@dataclass
class Cluster:
    connected: ConnectedCluster
    user_token: str  # a user holding the Cluster User Role on this cluster

    @property
    def rid(self) -> str:
        return self.connected.resource_id

    @property
    def key(self) -> str:
        return self.rid.lower()


def new_cluster(hub: RunningHub, ca_pem: bytes | None = None) -> Cluster:
    """Onboard a cluster, report its apiserver CA, and make a user who may connect to it."""
    cluster = connected(hub, f"safety-{uuid.uuid4().hex[:8]}")
    ca = ca_pem or pki.create_ca("apiserver").cert_pem
    with cluster.agent_client() as c:
        r = c.put(
            "/agent/v1/metadata",
            json={"clusterCertificateAuthority": ca.decode(), "apiserverServerName": SERVER_NAME},
        )
        assert r.status_code < 300, r.text
    user = str(uuid.uuid4())
    hub.assign(user, CLUSTER_USER, cluster.resource_id)
    return Cluster(cluster, hub.token(user))


# ---- the apiserver's port -------------------------------------------------------------------

PATTERN = bytes(range(256)) * 1024  # 256 KiB, what `fire` sends over and over


def pattern_digest(size: int) -> str:
    digest = hashlib.sha256()
    for offset in range(0, size, len(PATTERN)):
        digest.update(PATTERN[: min(len(PATTERN), size - offset)])
    return digest.hexdigest()


class Target:
    """A TCP server in the apiserver's place. The first line a connection sends picks what it does:

    `echo` echoes the rest (half-close included); `sink` reads nothing until released, then
    reads everything and records a digest; `fire N` writes N pattern bytes and closes;
    `name` answers the target's name.
    """

    def __init__(self, name: str = "target") -> None:
        self.name = name
        self.accepted = 0
        self.open = 0
        self.release = asyncio.Event()
        self.sunk: list[tuple[int, str]] = []  # (bytes, sha256) of each released sink
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> Target:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.writers.add(writer)
        try:
            mode, _, arg = (await reader.readline()).strip().partition(b" ")
            if mode == b"echo":
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
                writer.write_eof()
                await writer.drain()
            elif mode == b"sink":
                await self.release.wait()
                digest, size = hashlib.sha256(), 0
                while data := await reader.read(65536):
                    digest.update(data)
                    size += len(data)
                self.sunk.append((size, digest.hexdigest()))
            elif mode == b"fire":
                left = int(arg)
                while left > 0:
                    writer.write(PATTERN[: min(left, len(PATTERN))])
                    left -= len(PATTERN)
                    await writer.drain()
                writer.write_eof()
                await writer.drain()
            elif mode == b"name":
                writer.write(self.name.encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.open -= 1
            self.writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self) -> None:
        self.release.set()
        for writer in list(self.writers):
            writer.transport.abort()
        self.server.close()


# ---- the tunnel: relay, agents, proxies ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deadline(seconds: float) -> Callable[[F], F]:
    """Fail a test that runs longer than `seconds` (a hang is a failure, not a stuck run)."""

    def wrap(test: F) -> F:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            async with asyncio.timeout(seconds):
                await test(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap


async def until(predicate: Callable[[], bool], what: str, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for: {what}")
        await asyncio.sleep(0.02)


class Tunnel:
    """A relay on a fixed port (so it can be restarted), plus agents and proxies, all in this loop."""

    def __init__(self, hub: RunningHub, directory: Path) -> None:
        self.hub = hub
        ca, cert, key = pki.ensure_serving_pair(directory, ["localhost", "127.0.0.1"], "relay test CA")
        self.server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_ctx.load_cert_chain(cert, key)
        self.relay_ca = str(ca)
        self.relay_port = free_port()
        self.relay = Relay(SETTINGS)
        self._relay_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.stop = asyncio.Event()

    @property
    def url(self) -> str:
        return f"wss://localhost:{self.relay_port}"

    async def start_relay(self, relay: Relay | None = None) -> Relay:
        self.relay = relay or Relay(SETTINGS)
        server = RelayServer(
            self.relay, HubAuth(self.hub.url, self.hub.ca), "127.0.0.1", self.relay_port, self.server_ctx
        )
        ready = asyncio.Event()
        self._relay_task = asyncio.create_task(server.serve_forever(ready))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait([waiter, self._relay_task], timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            waiter.cancel()
            raise AssertionError(f"relay did not start: {self._relay_task}")
        return self.relay

    async def stop_relay(self) -> None:
        assert self._relay_task is not None
        self._relay_task.cancel()
        await asyncio.gather(self._relay_task, return_exceptions=True)

    def agent_token(
        self, cluster: Cluster, ttl: int = tokens.AGENT_TOKEN_TTL
    ) -> Callable[[], Awaitable[str]]:
        identity = cluster.connected.identity
        assert identity is not None

        async def token() -> str:
            return tokens.make_agent_token(identity, self.hub.url, ttl)

        return token

    def start_agent(
        self,
        cluster: Cluster,
        target: Target | int,
        stop: asyncio.Event | None = None,
        url: str | None = None,
        token_ttl: int = tokens.AGENT_TOKEN_TTL,
        **options: Any,
    ) -> ConnectAgent:
        agent = ConnectAgent(
            url or f"{self.url}{AGENT_PATH}",
            self.agent_token(cluster, token_ttl),
            ("127.0.0.1", target if isinstance(target, int) else target.port),
            self.relay_ca,
            SETTINGS,
            backoff=FAST,
            **options,
        )
        self._tasks.append(asyncio.create_task(agent.run(stop or self.stop)))
        return agent

    async def credential(self, cluster: Cluster, user_token: str | None = None) -> Credential:
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=self.hub.ca)) as c:
            r = await c.post(
                f"{self.hub.url}{cluster.rid}/listClusterUserCredential",
                headers={"Authorization": f"Bearer {user_token or cluster.user_token}"},
            )
        assert r.status_code == 200, r.text
        doc = r.json()
        relay = doc["hybridConnectionConfig"]["relay"]
        assert relay.endswith(CLIENT_PATH)
        return Credential(
            f"{self.url}{CLIENT_PATH}",  # this test's relay port, not the hub's configured one
            doc["hybridConnectionConfig"]["token"],
            float(doc["hybridConnectionConfig"]["expirationTime"]),
            base64.b64decode(doc["clusterConnect"]["certificateAuthorityData"]),
            doc["clusterConnect"]["tlsServerName"],
        )

    async def start_proxy(self, cluster: Cluster) -> ClientProxy:
        async def credentials() -> Credential:
            return await self.credential(cluster)

        proxy = ClientProxy(credentials, port=0, relay_ca_file=self.relay_ca, settings=SETTINGS, backoff=FAST)
        ready = asyncio.Event()
        self._tasks.append(asyncio.create_task(proxy.run(lambda _: ready.set(), self.stop)))
        await asyncio.wait_for(ready.wait(), 15)
        await until(lambda: proxy.mux is not None and proxy.mux.hello.done(), "proxy's relay session")
        return proxy

    async def connected(self, *clusters: Cluster, within: float = 15) -> None:
        await until(
            lambda: all(c.key in self.relay.connected_clusters() for c in clusters),
            f"agents of {[c.key for c in clusters]} on the relay",
            within,
        )

    def muxes(self, *parts: ConnectAgent | ClientProxy) -> list[Mux]:
        """Every live session: the relay's (both sides) and those of the given agents and proxies."""
        out = [*self.relay.client_muxes, *self.relay.agent_muxes()]
        for part in parts:
            if isinstance(part, ConnectAgent):
                out.extend(part.muxes)
            elif part.mux is not None:
                out.append(part.mux)
        return out

    async def close(self) -> None:
        """Stop everything; a part that does not stop fails the test (instead of hanging it)."""
        self.stop.set()
        tasks = [*self._tasks, *([self._relay_task] if self._relay_task else [])]
        for task in tasks:
            task.cancel()
        _, stuck = await asyncio.wait(tasks, timeout=15)
        assert not stuck, f"did not stop when cancelled: {[task.get_stack() for task in stuck]}"


@contextlib.asynccontextmanager
async def tunnel(hub: RunningHub, directory: Path) -> AsyncIterator[Tunnel]:
    t = Tunnel(hub, directory)
    await t.start_relay()
    try:
        yield t
    finally:
        await t.close()


@dataclass
class Stack:
    """The common shape: one cluster, its agent, its apiserver port and a user's client proxy."""

    tunnel: Tunnel
    cluster: Cluster
    target: Target
    agent: ConnectAgent
    proxy: ClientProxy

    @property
    def port(self) -> int:
        return self.proxy.port

    def muxes(self) -> list[Mux]:
        return self.tunnel.muxes(self.agent, self.proxy)


@contextlib.asynccontextmanager
async def stack(hub: RunningHub, directory: Path, **agent_options: Any) -> AsyncIterator[Stack]:
    target = await Target().start()
    cluster = new_cluster(hub)
    try:
        async with tunnel(hub, directory) as t:
            agent = t.start_agent(cluster, target, **agent_options)
            await t.connected(cluster)
            proxy = await t.start_proxy(cluster)
            yield Stack(t, cluster, target, agent, proxy)
    finally:
        await target.close()


async def exchange(port: int, request: bytes, payload: bytes = b"") -> bytes:
    """Connect to the proxy, send `request` + `payload`, half-close, and read to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:

        async def send() -> None:
            writer.write(request)
            view = memoryview(payload)
            for i in range(0, len(view), 1 << 20):
                writer.write(view[i : i + (1 << 20)])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        chunks = []
        while data := await reader.read(1 << 20):
            chunks.append(data)
        await sender
        return b"".join(chunks)
    finally:
        writer.close()


async def echo(port: int, payload: bytes) -> bytes:
    return await exchange(port, b"echo\n", payload)


def sample(relay: Relay, name: str, **labels: str) -> float:
    return relay.metrics.registry.get_sample_value(name, labels) or 0.0


# ---- a raw client, for what the client proxy would never send -----------------------------


@contextlib.asynccontextmanager
async def raw_ws(
    t: Tunnel, token: str | None, path: str = CLIENT_PATH, *, direct: bool = False
) -> AsyncIterator[ClientConnection]:
    """A websocket to the relay: plain `recv`/`send`, or (`direct`) the callback kind a Mux drives."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with connect(
        f"{t.url}{path}",
        ssl=ssl.create_default_context(cafile=t.relay_ca),
        additional_headers=headers,
        compression=None,
        max_size=4 * 1024 * 1024,
        ping_interval=None,
        proxy=None,
        open_timeout=10,
        create_connection=DirectClientConnection if direct else None,
    ) as ws:
        yield ws


@contextlib.asynccontextmanager
async def raw_mux(
    t: Tunnel,
    token: str,
    path: str = CLIENT_PATH,
    handler: Callable[[Stream], Awaitable[None]] | None = None,
    hello_info: dict[str, Any] | None = None,
) -> AsyncIterator[Mux]:
    """A tunnel session of our own (a dialler) over a websocket we opened ourselves."""
    async with raw_ws(t, token, path, direct=True) as ws:
        assert isinstance(ws, DirectClientConnection)
        mux = Mux(Session(Role.DIALLER, SETTINGS, hello_info or {}), ws, handler)
        task = asyncio.create_task(mux.run())
        try:
            await asyncio.wait_for(mux.hello, 10)
            yield mux
        finally:
            await mux.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)


async def read_all(stream: Stream) -> bytes:
    chunks = []
    while data := await stream.read():
        chunks.append(data)
        stream.consumed(len(data))
    return b"".join(chunks)


async def stream_exchange(mux: Mux, request: bytes, target: dict[str, Any] | None = None) -> bytes:
    stream = await mux.open(target or {"kind": "apiserver"})
    await stream.write(request)
    await stream.write_eof()
    return await asyncio.wait_for(read_all(stream), 15)


async def refused(t: Tunnel, token: str | None, path: str = CLIENT_PATH) -> tuple[int, str]:
    """Try a relay handshake that must fail; return the HTTP status and body."""
    with pytest.raises(InvalidStatus) as info:
        async with raw_ws(t, token, path):
            pass
    response = info.value.response
    return response.status_code, bytes(response.body or b"").decode()


# ---- 1. a stalled stream does not delay the others -----------------------------------------


async def push_until_stalled(writer: asyncio.StreamWriter, limit: int = 64 << 20) -> int:
    """Write until the connection stops taking bytes (a drain that does not finish in 2 s)."""
    chunk = os.urandom(64 * 1024)
    pushed = 0
    while pushed < limit:
        writer.write(chunk)
        try:
            await asyncio.wait_for(writer.drain(), 2)
        except TimeoutError:
            return pushed + len(chunk)
        pushed += len(chunk)
    raise AssertionError(f"{limit} bytes went into a target that reads nothing: nothing holds them back")


def only_stream(mux: Mux) -> Stream:
    assert len(mux.streams) == 1, mux.streams
    return next(iter(mux.streams.values()))


@deadline(120)
async def test_a_stalled_stream_does_not_delay_the_others(tunnel_hub: RunningHub, tmp_path: Path) -> None:
    async with stack(tunnel_hub, tmp_path) as s:
        relay = s.tunnel.relay
        # Stream A: the apiserver side never reads. Push until the whole path stops taking bytes.
        a_reader, a_writer = await asyncio.open_connection("127.0.0.1", s.port)
        a_writer.write(b"sink\n")
        digest = hashlib.sha256(b"")
        chunk = os.urandom(64 * 1024)
        pushed = 0
        while True:
            a_writer.write(chunk)
            digest.update(chunk)
            pushed += len(chunk)
            try:
                await asyncio.wait_for(asyncio.shield(a_writer.drain()), 2)
            except TimeoutError:
                break
            assert pushed < 64 << 20, "64 MiB went into a target that reads nothing"
        # A's state on every hop: the proxy's, the relay's two, the agent's.
        assert s.proxy.mux is not None
        a_proxy = only_stream(s.proxy.mux)
        (relay_client_mux,) = relay.client_muxes
        (relay_agent_mux,) = relay.agent_muxes(s.cluster.key)
        (agent_mux,) = s.agent.muxes
        a_relay_in, a_relay_out, a_agent = (
            only_stream(relay_client_mux),
            only_stream(relay_agent_mux),
            only_stream(agent_mux),
        )
        # The relay holds (most of) one window of A and the proxy has no credit left: the
        # windows, not the sender's speed, hold A's bytes back.
        await until(lambda: a_relay_in.buffered >= WINDOW * 3 // 4, "A's relay buffer to fill its window")
        await until(
            lambda: s.proxy.mux is not None and s.proxy.mux.session.send_capacity(a_proxy.id) == 0,
            "the proxy to run out of credit on A",
        )

        # Stream B: 8 MiB each way, while A stays stalled.
        payload = os.urandom(8 * 1024 * 1024)
        echoed = await asyncio.wait_for(echo(s.port, payload), 60)
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
        assert s.proxy.mux.session.send_capacity(a_proxy.id) == 0, "A moved while its reader was stalled"
        assert s.target.sunk == []

        for name, stream in (
            ("relay, client side", a_relay_in),
            ("relay, agent side", a_relay_out),
            ("agent", a_agent),
            ("proxy", a_proxy),
        ):
            # The window each hop granted (it may have grown from WINDOW, never past max_window).
            window = stream.window
            assert WINDOW <= window <= SETTINGS.max_window, (name, window)
            assert stream.peak_buffered <= window, f"{name} held {stream.peak_buffered} of A, window {window}"

        # A was only paused: once its reader reads, every byte arrives, in order.
        s.target.release.set()
        a_writer.write_eof()
        await asyncio.wait_for(a_writer.drain(), 30)
        await until(lambda: bool(s.target.sunk), "A to finish", 30)
        assert s.target.sunk == [(pushed, digest.hexdigest())]
        assert await asyncio.wait_for(a_reader.read(), 10) == b""
        a_writer.close()
        await until(lambda: sample(relay, "kubearc_relay_streams") == 0, "A to be closed on the relay")


# ---- 2. memory is bounded by the windows, not by the sender's speed ------------------------


@deadline(120)
async def test_memory_stays_within_the_windows_while_a_fast_sender_meets_a_stalled_reader(
    tunnel_hub: RunningHub, tmp_path: Path
) -> None:
    size = 64 * 1024 * 1024
    async with stack(tunnel_hub, tmp_path) as s:
        muxes = s.muxes()
        assert len(muxes) == 4  # proxy, relay (client side), relay (agent side), agent
        peak_total = 0
        sampling = True

        async def watch() -> None:
            nonlocal peak_total
            while sampling:
                peak_total = max(peak_total, *(m.buffered for m in muxes))
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port, limit=64 * 1024)
        writer.write(f"fire {size}\n".encode())
        await writer.drain()
        # The apiserver side writes 64 MiB as fast as it can; the reader stalls until the
        # tunnel's buffers have filled up, then reads in bursts with pauses.
        await until(
            lambda: max(m.peak_stream_buffered for m in muxes) >= WINDOW // 2,
            "the sender to outpace the stalled reader",
        )
        await asyncio.sleep(0.5)
        digest, got, since_pause = hashlib.sha256(), 0, 0
        while data := await asyncio.wait_for(reader.read(256 * 1024), 30):
            digest.update(data)
            got += len(data)
            since_pause += len(data)
            if since_pause >= 4 * 1024 * 1024:
                since_pause = 0
                await asyncio.sleep(0.1)
        writer.close()
        sampling = False
        await watcher
        assert got == size and digest.hexdigest() == pattern_digest(size)

        for mux in muxes:  # a stream's window may grow (tuning), never past either bound
            settings = mux.session.settings
            assert mux.peak_stream_buffered <= min(settings.max_window, settings.connection_window) + MAX_DATA
        assert peak_total <= CONN_WINDOW + MAX_DATA


# ---- 3. open/close cycles leave nothing behind -----------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# The openers run in a child process, so the tunnel (in this one) has a core to itself.
OPENERS = """
import asyncio, contextlib, sys

async def cycle(port, kind):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if kind == 0:  # a whole exchange with half-close
            writer.write(b"echo\\nhello")
            writer.write_eof()
            assert await reader.read() == b"hello"
        elif kind == 1:  # a reply, then the client aborts (RST) without half-closing
            writer.write(b"echo\\nping")
            assert await reader.readexactly(4) == b"ping"
            writer.transport.abort()
        elif kind == 2:  # connect and go away at once
            pass
        else:  # the apiserver side closes first
            writer.write(b"name\\n")
            assert await reader.read() == b"target\\n"
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

async def main(port, cycles, workers):
    counter = iter(range(cycles))
    async def worker():
        for i in counter:
            await cycle(port, i % 4)
    await asyncio.gather(*(worker() for _ in range(workers)))
    print("done", cycles)

asyncio.run(main(*map(int, sys.argv[1:])))
"""


@deadline(240)
async def test_ten_thousand_open_close_cycles_leave_no_stream_task_or_socket(
    tunnel_hub: RunningHub, tmp_path: Path
) -> None:
    async with stack(tunnel_hub, tmp_path) as s:
        relay = s.tunnel.relay
        assert await echo(s.port, b"warm") == b"warm"
        await until(lambda: s.target.open == 0, "warm-up to finish")
        await asyncio.sleep(0.2)
        tasks, fds = len(asyncio.all_tasks()), open_fds()
        cycles = int(os.environ.get("CYCLES", 10_000))
        openers = await asyncio.create_subprocess_exec(
            sys.executable, "-c", OPENERS, str(s.port), str(cycles), "16", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(openers.communicate(), 120)
        assert openers.returncode == 0 and out.split() == [b"done", str(cycles).encode()], out
        assert s.target.accepted >= cycles  # every cycle reached the apiserver's port

        muxes = s.muxes()
        assert len(muxes) == 4

        def settled() -> bool:
            return (
                sample(relay, "kubearc_relay_streams") == 0
                and all(not m.streams and m.session.open_streams == 0 for m in muxes)
                and s.target.open == 0
                and len(asyncio.all_tasks()) <= tasks
            )

        await until(settled, "every stream, task and connection to go away", 30)
        assert sample(relay, "kubearc_relay_streams_opened_total") >= cycles
        assert s.muxes() == muxes, "a session was replaced during the cycles"
        assert len(asyncio.all_tasks()) <= tasks
        await until(lambda: open_fds() <= fds + 2, f"open fds back near {fds} (now {open_fds()})", 10)


# ---- 4. the agent and the proxy survive a relay restart --------------------------------------


@deadline(120)
async def test_a_relay_restart_is_survived(tunnel_hub: RunningHub, tmp_path: Path) -> None:
    async with stack(tunnel_hub, tmp_path) as s:
        assert await echo(s.port, b"before") == b"before"
        # Two streams stuck in the worst places when the relay goes: the agent blocked writing
        # to an apiserver that reads nothing, the proxy blocked writing to a client that reads
        # nothing (and neither peer sends anything).
        _, sink_writer = await asyncio.open_connection("127.0.0.1", s.port)
        sink_writer.write(b"sink\n")
        await push_until_stalled(sink_writer)
        fire_reader, fire_writer = await asyncio.open_connection("127.0.0.1", s.port, limit=64 * 1024)
        fire_writer.write(b"fire 67108864\n")
        await fire_writer.drain()
        await until(lambda: sample(s.tunnel.relay, "kubearc_relay_streams") == 2, "both streams relayed")
        await asyncio.sleep(1)  # let the fire stream fill every buffer on its way
        old_proxy_mux = s.proxy.mux

        await s.tunnel.stop_relay()
        await until(lambda: s.agent.live == 0, "the agent to notice the relay is gone", 15)
        await until(lambda: s.proxy.mux is not old_proxy_mux, "the proxy to drop its session", 15)
        # The agent let go of both apiserver connections: once the sink reads again it finds
        # its connection reset (or ended), and the fire stream's writes fail.
        s.target.release.set()
        await until(lambda: s.target.open == 0, "the stuck apiserver connections to be closed", 15)

        relay = await s.tunnel.start_relay()  # a new relay process on the same port
        await s.tunnel.connected(s.cluster, within=20)
        await until(lambda: s.agent.sessions_started == 2 and s.agent.live == 1, "the agent's new session")
        await until(
            lambda: s.proxy.mux is not None and s.proxy.mux.hello.done(), "the proxy's new session", 20
        )
        assert await asyncio.wait_for(echo(s.port, b"after" * 1000), 30) == b"after" * 1000
        assert sample(relay, "kubearc_relay_sessions", side="agent") == 1
        for writer in (sink_writer, fire_writer):
            writer.transport.abort()
        del fire_reader


# ---- 5. credential renewal keeps open streams alive -------------------------------------------

TTL = 6  # seconds a relay credential (and an agent token) lives in this test


@deadline(120)
async def test_renewals_keep_streams_alive_and_expiry_refuses_only_new_streams(tmp_path: Path) -> None:
    with running_hub(tmp_path / "hub", relay_credential_ttl=dt.timedelta(seconds=TTL)) as hub:
        renewing, lapsing = new_cluster(hub), new_cluster(hub)
        target = await Target().start()
        try:
            async with tunnel(hub, tmp_path / "relay") as t:
                relay = t.relay
                began = time.time()
                agent = t.start_agent(renewing, target, token_ttl=TTL, renew_interval=1.5)
                lazy = t.start_agent(lapsing, target, token_ttl=TTL, renew_interval=3600)
                await t.connected(renewing, lapsing)
                proxy = await t.start_proxy(renewing)
                first = proxy.credential
                assert first is not None and first.expires_at - time.time() <= TTL + 1
                # A client that never renews: its credential lapses while its stream is open.
                stale = await t.credential(renewing)
                async with raw_mux(t, stale.token) as mux:
                    old = await mux.open({"kind": "apiserver"})
                    await old.write(b"echo\n")
                    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
                    writer.write(b"echo\n")
                    rounds = 0
                    # Keep both streams busy until well past both credentials' expiry.
                    while time.time() < max(first.expires_at, stale.expires_at, began + TTL) + 3:
                        line = f"round {rounds}\n".encode()
                        writer.write(line)
                        assert await asyncio.wait_for(reader.readexactly(len(line)), 10) == line
                        await old.write(line)
                        got = b""
                        while len(got) < len(line):
                            chunk = await asyncio.wait_for(old.read(), 10)
                            assert chunk, "the lapsed client's open stream ended"
                            got += chunk
                            old.consumed(len(chunk))
                        assert got == line
                        rounds += 1
                        await asyncio.sleep(0.2)
                    writer.close()

                    # The lapsed credential opens nothing new, and says why.
                    with pytest.raises(StreamError) as info:
                        await mux.open({"kind": "apiserver"})
                    assert info.value.code == ErrorCode.UNAUTHORIZED
                    assert "expired" in info.value.reason
                    assert sample(relay, "kubearc_relay_streams_refused_total", reason="expired") >= 1

                # The renewing proxy opens new streams after its first credential expired.
                assert await asyncio.wait_for(echo(proxy.port, b"fresh"), 15) == b"fresh"
                assert proxy.renewals >= 1
                assert sample(relay, "kubearc_relay_renewals_total", side="client", result="accepted") >= 1
                assert sample(relay, "kubearc_relay_renewals_total", side="agent", result="accepted") >= 2
                assert sample(relay, "kubearc_relay_renewals_total", side="client", result="rejected") == 0
                # The renewing agent kept its one session; the one that never renews was sent away
                # when its token expired (and came back with a fresh one).
                assert agent.sessions_started == 1
                await until(lambda: lazy.sessions_started >= 2, "the lapsed agent to be sent away")
        finally:
            await target.close()


# ---- 6. who may open a tunnel ------------------------------------------------------------------


def forged_relay_token(hub: RunningHub, cluster: Cluster, *, key: Any = None, exp: int | None = None) -> str:
    """A relay credential shaped like the hub's; signed with `key` (default: the hub's own)."""
    now = int(time.time())
    claims = {
        "iss": hub.hub.issuer,
        "aud": "kubearc-relay",
        "sub": str(uuid.uuid4()),
        "cluster": cluster.key,
        "iat": now,
        "nbf": now - 5,
        "exp": exp if exp is not None else now + 600,
    }
    return jwt.encode(
        claims,
        key or hub.hub.issuer_key,
        algorithm="RS256",
        headers={"kid": hub.hub.issuer_kid, "typ": "kubearc-relay+jwt"},
    )


@deadline(120)
async def test_only_authorized_users_with_valid_credentials_reach_only_their_cluster(
    tunnel_hub: RunningHub, tmp_path: Path
) -> None:
    hub = tunnel_hub
    a, b = new_cluster(hub), new_cluster(hub)
    # A user who may read the cluster resource but not list its user credential.
    viewer = str(uuid.uuid4())
    hub.assign(viewer, "Azure Arc Kubernetes Viewer", a.rid)
    for token in (hub.token(viewer), hub.token(), b.user_token):
        with hub.client(token) as c:
            r = c.post(f"{a.rid}/listClusterUserCredential")
        assert r.status_code == 403, r.text
        assert "listClusterUserCredential" in r.json()["error"]["message"]
    with hub.client(hub.token(viewer)) as c:
        assert c.get(a.rid).status_code == 200  # the viewer does see the cluster

    target_a, target_b = await Target("cluster-a").start(), await Target("cluster-b").start()
    try:
        async with tunnel(hub, tmp_path) as t:
            stop_a = asyncio.Event()
            t.start_agent(a, target_a, stop=stop_a)
            t.start_agent(b, target_b)
            await t.connected(a, b)
            good = (await t.credential(a)).token

            # Credentials the relay must refuse at the handshake, each with a reason.
            cases: dict[str, tuple[str | None, str]] = {
                "none": (None, "missing bearer"),
                "garbage": ("not-a-token", "relay credential refused"),
                "forged": (
                    forged_relay_token(
                        hub, a, key=rsa.generate_private_key(public_exponent=65537, key_size=2048)
                    ),
                    "relay credential refused",
                ),
                "expired": (forged_relay_token(hub, a, exp=int(time.time()) - 3600), "expired"),
                "hub access token": (hub.token(), "not a relay credential"),
                "agent token": (await t.agent_token(a)(), "not a relay credential"),
            }
            for name, (bad, reason) in cases.items():
                status, body = await refused(t, bad)
                assert status == 401, (name, status, body)
                assert reason in body.lower(), (name, body)
            # ... and the client's credential is no agent credential either.
            status, body = await refused(t, good, AGENT_PATH)
            assert status == 401 and body.strip(), body

            # A's credential reaches A's apiserver, whatever the client asks for.
            async with raw_mux(t, good) as mux:
                for wanted in (
                    {"kind": "apiserver"},
                    {"kind": "apiserver", "cluster": b.rid, "resourceId": b.key},
                ):
                    assert await stream_exchange(mux, b"name\n", wanted) == b"cluster-a\n"
                assert target_b.accepted == 0

                # With A's agent gone, A's credential reaches nothing, though B's agent is there.
                stop_a.set()
                await until(lambda: a.key not in t.relay.connected_clusters(), "A's agent to leave")
                with pytest.raises(StreamError) as info:
                    await mux.open({"kind": "apiserver", "cluster": b.rid})
                assert info.value.code == ErrorCode.NO_ROUTE
                assert a.key in info.value.reason and "has no agent session" in info.value.reason
            assert target_b.accepted == 0
    finally:
        await target_a.close()
        await target_b.close()


# ---- 7. an agent serves only the cluster its certificate names ------------------------------


@deadline(120)
async def test_an_agent_serves_only_its_own_cluster_and_a_deleted_cluster_is_refused(
    tunnel_hub: RunningHub, tmp_path: Path
) -> None:
    hub = tunnel_hub
    a, b, doomed = new_cluster(hub), new_cluster(hub), new_cluster(hub)
    target = await Target("doomed").start()
    try:
        async with tunnel(hub, tmp_path) as t:
            # A raw agent with A's identity that claims to be B every way it can.
            async def answer(stream: Stream) -> None:
                stream.accept()
                await read_all(stream)
                await stream.write(b"agent of A\n")
                await stream.write_eof()

            claim = {"cluster": b.key, "resourceId": b.rid}
            async with raw_mux(
                t,
                await t.agent_token(a)(),
                f"{AGENT_PATH}?cluster={b.rid}&resourceId={b.rid}",
                handler=answer,
                hello_info=claim,
            ):
                await t.connected(a)
                assert t.relay.connected_clusters() == [a.key]
                async with raw_mux(t, (await t.credential(a)).token) as mux_a:
                    assert await stream_exchange(mux_a, b"hi") == b"agent of A\n"
                async with raw_mux(t, (await t.credential(b)).token) as mux_b:
                    with pytest.raises(StreamError) as info:
                        await mux_b.open({"kind": "apiserver"})
                    assert "has no agent session" in info.value.reason

            # An agent session that ends with an OPEN unanswered: the client hears so at once,
            # not when the relay's wait for the answer runs out.
            async def silent(stream: Stream) -> None:
                await stream.wait_failed()

            async with raw_mux(t, await t.agent_token(a)(), AGENT_PATH, handler=silent) as agent_mux:
                await t.connected(a)
                async with raw_mux(t, (await t.credential(a)).token) as client:
                    opening = asyncio.create_task(client.open({"kind": "apiserver"}, wait=120))
                    await until(lambda: bool(agent_mux.streams), "the OPEN to reach the agent")
                    await agent_mux.close()
                    with pytest.raises(StreamError) as info:
                        await asyncio.wait_for(opening, 10)  # the relay would wait 30 s for an answer
                    assert info.value.code == ErrorCode.NO_ROUTE  # another replica may have a session

            # Deleting a cluster revokes its identity: the next in-band renewal is refused,
            # the agent loses its session, and every reconnect is refused.
            agent = t.start_agent(doomed, target, renew_interval=1.0)
            await t.connected(doomed)
            proxy = await t.start_proxy(doomed)
            assert await echo(proxy.port, b"ok") == b"ok"
            owner = str(uuid.uuid4())
            hub.assign(owner, "Owner", f"/subscriptions/{SUB}")
            with hub.client(hub.token(owner)) as c:
                assert c.delete(doomed.rid).status_code == 200
            await until(
                lambda: doomed.key not in t.relay.connected_clusters(), "the revoked agent to be dropped"
            )
            assert sample(t.relay, "kubearc_relay_renewals_total", side="agent", result="rejected") >= 1
            started = agent.sessions_started
            await asyncio.sleep(2)  # several reconnect attempts (backoff cap 1 s)
            assert doomed.key not in t.relay.connected_clusters()
            assert agent.sessions_started == started, "a revoked agent got a session again"
            status, body = await refused(t, await t.agent_token(doomed)(), AGENT_PATH)
            assert status == 401 and "revoked" in body, body
    finally:
        await target.close()


# ---- 8. the relay never sees the bearer token -------------------------------------------------


class Tap:
    """A transport that records every message passing through it (and changes nothing)."""

    def __init__(self, inner: Transport, record: Callable[[str, bytes], None], side: str) -> None:
        self.inner, self.record, self.side = inner, record, f"{side}#{id(self):x}"

    @property
    def can_write(self) -> bool:
        return self.inner.can_write

    def deliver_to(self, on_message: Callable[[bytes], None], on_batch: Callable[[], None]) -> None:
        def tapped(message: bytes) -> None:
            self.record(f"{self.side}>relay", message)
            on_message(message)

        self.inner.deliver_to(tapped, on_batch)

    def write_messages(self, messages: Iterable[bytes | memoryview]) -> None:
        copies = [bytes(m) for m in messages]
        for message in copies:
            self.record(f"relay>{self.side}", message)
        self.inner.write_messages(copies)

    async def wait_closed(self) -> None:
        await self.inner.wait_closed()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.inner.close(code, reason)


class TappedRelay(Relay):
    def __init__(self) -> None:
        super().__init__(SETTINGS)
        self.payloads: dict[tuple[str, int], bytearray] = defaultdict(bytearray)
        self.messages: list[bytes] = []

    def _record(self, direction: str, message: bytes) -> None:
        self.messages.append(message)
        with contextlib.suppress(fr.FrameError):
            frame = fr.decode(message)
            if frame.type is FrameType.DATA:
                self.payloads[(direction, frame.stream_id)] += frame.payload

    async def serve_agent(self, transport: Transport, *args: Any) -> None:
        await super().serve_agent(Tap(transport, self._record, "agent"), *args)

    async def serve_client(self, transport: Transport, *args: Any) -> None:
        await super().serve_client(Tap(transport, self._record, "client"), *args)


def apiserver_tls(directory: Path) -> tuple[ssl.SSLContext, pki.KeyPair]:
    ca = pki.create_ca("apiserver CA")
    leaf = pki.issue_keypair(ca, SERVER_NAME, sans=[SERVER_NAME], server=True)
    directory.mkdir(parents=True, exist_ok=True)
    leaf.write(directory / "tls.crt", directory / "tls.key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(directory / "tls.crt", directory / "tls.key")
    return ctx, ca


async def https_target(directory: Path) -> tuple[asyncio.Server, pki.KeyPair, list[str]]:
    """An HTTPS server in the apiserver's place that records the Authorization headers it gets."""
    ctx, ca = apiserver_tls(directory)
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            auth = [
                line.split(b":", 1)[1].strip().decode()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"authorization:")
            ]
            seen.extend(auth)
            body = b'{"kind":"APIVersions","versions":["v1"]}'
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
    return server, ca, seen


@deadline(120)
async def test_the_relay_never_sees_the_bearer_token_when_tls_runs_end_to_end(
    tunnel_hub: RunningHub, tmp_path: Path
) -> None:
    hub = tunnel_hub
    server, apiserver_ca, seen = await https_target(tmp_path / "apiserver")
    plain = await Target().start()
    secret = f"kubearc-secret-{uuid.uuid4().hex}"
    cluster, control = new_cluster(hub, apiserver_ca.cert_pem), new_cluster(hub)
    relay = TappedRelay()
    t = Tunnel(hub, tmp_path / "relay")
    await t.start_relay(relay)
    try:
        t.start_agent(cluster, int(server.sockets[0].getsockname()[1]))
        t.start_agent(control, plain)
        await t.connected(cluster, control)
        proxy = await t.start_proxy(cluster)
        credential = proxy.credential
        assert credential is not None and credential.ca_pem == apiserver_ca.cert_pem

        # What kubectl does with the kubeconfig `kubearc proxy` writes: verify the apiserver by
        # the cluster's CA and server name, then send the bearer token inside TLS.
        tls = ssl.create_default_context(cadata=credential.ca_pem.decode())
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", proxy.port, ssl=tls, server_hostname=credential.tls_server_name
        )
        writer.write(
            f"GET /api HTTP/1.1\r\nHost: {SERVER_NAME}\r\nAuthorization: Bearer {secret}\r\n"
            "Accept: application/json\r\n\r\n".encode()
        )
        response = await asyncio.wait_for(reader.read(), 15)
        writer.close()
        assert response.startswith(b"HTTP/1.1 200 OK") and b"APIVersions" in response
        assert seen == [f"Bearer {secret}"]  # the apiserver did get the token

        # A control: the same request in clear text through the same relay is seen by the tap.
        async with raw_mux(t, (await t.credential(control)).token) as mux:
            clear = f"GET /api HTTP/1.1\r\nAuthorization: Bearer {secret}-clear\r\n\r\n".encode()
            assert await stream_exchange(mux, b"echo\n" + clear) == clear

        tls_streams = {k: v for k, v in relay.payloads.items() if secret.encode() + b"-clear" not in v}
        assert any(k[0].startswith("client#") and v[:1] == b"\x16" for k, v in tls_streams.items())
        assert sum(len(v) for v in tls_streams.values()) > 2 * len(secret)
        assert any(f"{secret}-clear".encode() in v for v in relay.payloads.values()), "the tap sees nothing"
        for (direction, sid), payload in tls_streams.items():
            assert secret.encode() not in payload, f"bearer token in clear on {direction} stream {sid}"
        leaked = [m for m in relay.messages if secret.encode() in m and f"{secret}-clear".encode() not in m]
        assert leaked == []
    finally:
        await t.close()
        server.close()
        await plain.close()


# ---- 9. egress through an HTTP CONNECT proxy --------------------------------------------------


class ConnectProxy:
    """A small HTTP CONNECT proxy that remembers whom it connected to and from which address.

    With `delay`, every byte is held that many seconds each way (a delay line, no bandwidth
    limit): the path behind it looks like a long-distance link."""

    def __init__(self, delay: float = 0.0) -> None:
        self.targets: list[tuple[str, int]] = []
        self.upstream_addresses: list[tuple[str, int]] = []
        self.delay = delay

    async def start(self) -> ConnectProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, authority, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                return
            host, port = authority.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            self.targets.append((host, int(port)))
            self.upstream_addresses.append(up_writer.get_extra_info("sockname")[:2])
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

            async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

                async def release() -> None:
                    while True:
                        due, data = await line.get()
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                        if not data:
                            if dst.can_write_eof():
                                dst.write_eof()
                            return
                        dst.write(data)
                        await dst.drain()

                with contextlib.suppress(ConnectionError, OSError):
                    async with asyncio.TaskGroup() as tasks:
                        tasks.create_task(release())
                        while data := await src.read(65536):
                            line.put_nowait((time.monotonic() + self.delay, data))
                        line.put_nowait((time.monotonic() + self.delay, b""))

            await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
            up_writer.close()
        except (ConnectionError, OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def egress_proxy(monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> ConnectProxy:
    """A CONNECT proxy that the agent's relay session must take (from `HTTPS_PROXY`).

    The hub and the client proxy's relay URL are "localhost" (direct); the agent dials the relay
    as 127.0.0.1, which NO_PROXY does not name, so it must take the proxy."""
    egress = await ConnectProxy(delay).start()
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{egress.port}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "localhost")
    for name in ("ALL_PROXY", "all_proxy", "WSS_PROXY", "wss_proxy"):
        monkeypatch.delenv(name, raising=False)
    return egress


@deadline(120)
async def test_the_agent_reaches_the_relay_through_an_https_proxy(
    tunnel_hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    egress = await egress_proxy(monkeypatch)
    target = await Target().start()
    cluster = new_cluster(tunnel_hub)
    try:
        async with tunnel(tunnel_hub, tmp_path) as t:
            agent = t.start_agent(cluster, target, url=f"wss://127.0.0.1:{t.relay_port}{AGENT_PATH}")
            await t.connected(cluster)
            assert set(egress.targets) == {("127.0.0.1", t.relay_port)}
            (agent_mux,) = t.relay.agent_muxes(cluster.key)
            peer = agent_mux.transport.remote_address  # type: ignore[attr-defined]
            assert tuple(peer[:2]) in egress.upstream_addresses, (
                "the agent's session did not come through the proxy"
            )
            await until(lambda: agent.live == 1, "the agent's session")

            proxy = await t.start_proxy(cluster)
            request = b"GET /api/v1/namespaces/default/pods?watch=true HTTP/1.1\r\nHost: k\r\n\r\n" * 100
            payload = request + os.urandom(2 * 1024 * 1024)
            assert await asyncio.wait_for(echo(proxy.port, payload), 30) == payload
            assert set(egress.targets) == {("127.0.0.1", t.relay_port)}  # only the agent used it
            assert len(egress.targets) == agent.sessions_started
    finally:
        await target.close()
        egress.server.close()


# ---- 10. malformed frames end one session, never the relay ------------------------------------


def hello() -> bytes:
    return Session(Role.DIALLER, SETTINGS).frames_to_send()[0]


def frame(ftype: int, sid: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return struct.pack("!BBI", ftype, flags, sid) + payload


def open_frame(sid: int, doc: bytes) -> bytes:
    return frame(FrameType.OPEN, sid, doc)


GARBAGE: dict[str, tuple[list[bytes | str | list[bytes]], ErrorCode | None]] = {
    "shorter than a header": ([b"\x01"], ErrorCode.FRAME_SIZE_ERROR),
    "random bytes": ([random.Random(7).randbytes(200)], None),
    "a text message": (["GET / HTTP/1.1"], None),
    "data before hello": ([frame(FrameType.DATA, 1, b"x")], ErrorCode.PROTOCOL_ERROR),
    "unknown frame type": ([hello(), frame(0xEE, 0)], ErrorCode.PROTOCOL_ERROR),
    "hello that is not json": ([frame(FrameType.HELLO, 0, b"\xff{")], ErrorCode.PROTOCOL_ERROR),
    "deeply nested hello": (
        [frame(FrameType.HELLO, 0, b'{"a":' + b"[" * 4000 + b"]" * 4000 + b"}")],
        ErrorCode.PROTOCOL_ERROR,
    ),
    "hello with a 5000-digit number": (
        [frame(FrameType.HELLO, 0, b'{"versions":[1],"x":' + b"7" * 5000 + b"}")],
        ErrorCode.PROTOCOL_ERROR,
    ),
    "unknown version": ([frame(FrameType.HELLO, 0, b'{"versions":[99]}')], ErrorCode.VERSION_MISMATCH),
    "second hello": ([hello(), hello()], ErrorCode.PROTOCOL_ERROR),
    "open with the relay's parity": ([hello(), open_frame(2, b"{}")], ErrorCode.PROTOCOL_ERROR),
    "open that is not an object": ([hello(), open_frame(1, b"[1,2]")], ErrorCode.PROTOCOL_ERROR),
    "data on a stream never opened": ([hello(), frame(FrameType.DATA, 7, b"x")], ErrorCode.PROTOCOL_ERROR),
    "window overflow": (
        [hello(), frame(FrameType.WINDOW, 0, struct.pack("!I", fr.MAX_WINDOW))],
        ErrorCode.FLOW_CONTROL_ERROR,
    ),
    "oversized message": ([b"\x05\x00\x00\x00\x00\x01" + b"x" * (3 * 1024 * 1024)], None),
    "fragmented message": ([hello(), [b"\x05\x00\x00\x00", b"\x00\x01x"]], None),
}
CLOSED_BY_WEBSOCKET = {"oversized message": 1009, "fragmented message": 1003}  # not by the session


async def send_garbage(
    t: Tunnel, token: str, messages: list[bytes | str | list[bytes]]
) -> tuple[list[fr.Frame], int | None]:
    """Send `messages` on a fresh client session; return what the relay answered and its close code."""
    answers: list[fr.Frame] = []
    async with raw_ws(t, token) as ws:
        with contextlib.suppress(ConnectionClosed):
            for message in messages:
                await ws.send(message)
        try:
            async with asyncio.timeout(15):
                async for message in ws:
                    assert isinstance(message, bytes)
                    answers.append(fr.decode(message))
        except ConnectionClosed:
            pass
        except TimeoutError:
            raise AssertionError(f"the relay kept a broken session open; it answered {answers}") from None
        assert ws.close_code is not None
        return answers, ws.close_code


@deadline(120)
async def test_malformed_frames_end_their_session_and_never_the_relay(
    tunnel_hub: RunningHub, tmp_path: Path
) -> None:
    async with stack(tunnel_hub, tmp_path) as s:
        t, relay = s.tunnel, s.tunnel.relay
        token = (await t.credential(s.cluster)).token
        # A session that keeps working all along, with a stream open across the garbage.
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(b"echo\n")
        for name, (messages, code) in GARBAGE.items():
            answers, close_code = await send_garbage(t, token, messages)
            goaways = [fr.read_goaway(a) for a in answers if a.type is FrameType.GOAWAY]
            if name in CLOSED_BY_WEBSOCKET:
                assert close_code == CLOSED_BY_WEBSOCKET[name], (name, close_code)
            else:
                assert goaways, f"{name}: no GOAWAY in {answers}"
                if code is not None:
                    assert goaways[0][1] == code, (name, goaways)
                assert goaways[0][2], f"{name}: GOAWAY without a reason"
            writer.write(name.encode())
            assert await asyncio.wait_for(reader.readexactly(len(name)), 10) == name.encode()

        # A target the relay cannot pass on (ASCII-escaping makes it outgrow a control frame):
        # refused with a reason, the session goes on, and nothing is left on the agent's session.
        big = json.dumps({"kind": "apiserver", "note": "é" * 3000}, ensure_ascii=False).encode()
        async with raw_ws(t, token) as ws:
            await ws.send(hello())
            await ws.send(open_frame(1, big))
            async with asyncio.timeout(15):
                while (answer := fr.decode(await ws.recv(decode=False))).type is not FrameType.OPEN_ERR:
                    assert answer.type is not FrameType.GOAWAY, fr.read_goaway(answer)
            assert answer.stream_id == 1 and fr.read_coded(answer)[0] == ErrorCode.CONNECT_FAILED
        (agent_side,) = relay.agent_muxes(s.cluster.key)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()

        assert s.tunnel._relay_task is not None and not s.tunnel._relay_task.done()
        await until(
            lambda: sample(relay, "kubearc_relay_sessions", side="client") == 1, "broken sessions gone"
        )
        await until(lambda: sample(relay, "kubearc_relay_streams") == 0, "relayed streams closed")
        await until(lambda: agent_side.session.open_streams == 0, "no stream left on the agent's session")
        assert await echo(s.port, b"after") == b"after"


async def test_relay_metrics_count_bytes_and_broken_sessions_over_https(
    tunnel_hub: RunningHub, tmp_path: Path
) -> None:
    async with stack(tunnel_hub, tmp_path) as s:
        t = s.tunnel
        payload = os.urandom(1_000_000)
        assert await echo(s.port, payload) == payload
        token = (await t.credential(s.cluster)).token
        answers, _ = await send_garbage(t, token, [b"\x05"])  # shorter than a frame header
        assert answers, "no GOAWAY for a broken frame"

        async def scrape() -> dict[tuple[str, ...], float]:
            async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=t.relay_ca)) as client:
                response = await client.get(f"https://localhost:{t.relay_port}/metrics")
            assert response.status_code == 200
            found: dict[tuple[str, ...], float] = {}
            for family in text_string_to_metric_families(response.text):
                for sample_ in family.samples:
                    found[(sample_.name, *sorted(sample_.labels.values()))] = sample_.value
            return found

        await until(lambda: sample(t.relay, "kubearc_relay_streams") == 0, "the echo stream closed")
        found = await scrape()
        for side in ("agent", "client"):
            for direction in ("received", "sent"):
                key = ("kubearc_relay_bytes_total", *sorted((side, direction)))
                assert found.get(key, 0) >= len(payload), (key, found.get(key))
        assert found[("kubearc_relay_session_failures_total", "FRAME_SIZE_ERROR", "client")] >= 1


@deadline(120)
async def test_a_long_path_grows_the_window_past_its_start(
    tunnel_hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 20 ms each way between agent and relay. A 256 KiB window allows ~6 MB/s there; the relay's
    # agent-side session measures the round trip with PINGs and grows the window of a download
    # that keeps it full. (On loopback it stays at its start: `test_tunnel_protocol`.)
    await egress_proxy(monkeypatch, delay=0.020)
    target = await Target().start()
    cluster = new_cluster(tunnel_hub)
    try:
        async with tunnel(tunnel_hub, tmp_path) as t:
            t.start_agent(cluster, target, url=f"wss://127.0.0.1:{t.relay_port}{AGENT_PATH}")
            await t.connected(cluster)
            (agent_side,) = t.relay.agent_muxes(cluster.key)
            await until(lambda: agent_side.session.rtt >= 0.04, "a round trip measured through the delay")
            proxy = await t.start_proxy(cluster)
            largest = 0
            done = False

            async def watch() -> None:
                nonlocal largest
                while not done:
                    for stream in list(agent_side.streams.values()):
                        largest = max(largest, agent_side.session.window(stream.id))
                    await asyncio.sleep(0.01)

            watcher = asyncio.create_task(watch())
            size = 24 * 1024 * 1024
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(f"fire {size}\n".encode())
            digest, got = hashlib.sha256(), 0
            while data := await asyncio.wait_for(reader.read(1 << 20), 30):
                digest.update(data)
                got += len(data)
            writer.close()
            done = True
            await watcher
            assert got == size and digest.hexdigest() == pattern_digest(size)
            assert largest > WINDOW, f"the window stayed at {largest} on a 40 ms path"
            assert largest <= SETTINGS.max_window
            # The relay's metrics say so too: windows grown on the agent side, and one agent
            # session measured at least 40 ms away (the delay line), one client session.
            relay = t.relay
            assert sample(relay, "kubearc_relay_windows_grown_total", side="agent") >= 1
            rtt = "kubearc_relay_session_round_trip_seconds_bucket"
            assert sample(relay, rtt, side="agent", le="0.025") == 0
            assert sample(relay, rtt, side="agent", le="+Inf") == 1
            assert sample(relay, rtt, side="client", le="+Inf") == 1
    finally:
        await target.close()


# ---- handshakes abandoned half way leave nothing behind -------------------------------------


def _alive(kind: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


@deadline(120)
async def test_upgrades_abandoned_at_any_moment_leave_nothing_behind(
    tunnel_hub: RunningHub, tmp_path: Path
) -> None:
    """500 agent upgrades cut off before, during and after the request, and while the relay asks
    the hub who the token belongs to: whatever the relay kept for them is gone afterwards."""
    hub = tunnel_hub
    cluster = new_cluster(hub)
    async with tunnel(hub, tmp_path) as t:
        token = await t.agent_token(cluster)()
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {AGENT_PATH} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
        tls = ssl.create_default_context(cafile=t.relay_ca)
        baseline = _alive(AgentIdentity), _alive(DirectServerConnection)
        for i in range(500):
            _, writer = await asyncio.open_connection(
                "127.0.0.1", t.relay_port, ssl=tls, server_hostname="localhost"
            )
            moment = i % 4
            if moment == 1:
                writer.write(request[: len(request) // 2])
            elif moment >= 2:
                writer.write(request)
            await asyncio.sleep(0.002 if moment == 3 else 0)  # 3: the hub's whoami is on its way
            writer.transport.abort()
        await until(
            # At most as many as before (earlier tests' leftovers may be collected meanwhile).
            lambda: _alive(AgentIdentity) <= baseline[0] and _alive(DirectServerConnection) <= baseline[1],
            "the abandoned upgrades to be released",
            60,
        )
        assert t.relay.connected_clusters() == []


# ---- a broken stream is never mistaken for a finished one -----------------------------------


@deadline(120)
async def test_a_relay_dying_mid_transfer_resets_both_local_ends(
    tunnel_hub: RunningHub, tmp_path: Path
) -> None:
    """A truncated download must not end with a clean EOF at the client, nor a truncated upload
    with one at the apiserver: both local sockets are reset (RST), not closed (FIN)."""
    async with stack(tunnel_hub, tmp_path) as s:
        # An upload the apiserver side has not read yet, and a download in full flow.
        _, up = await asyncio.open_connection("127.0.0.1", s.port)
        up.write(b"sink\n")
        await push_until_stalled(up)
        down_reader, down = await asyncio.open_connection("127.0.0.1", s.port)
        down.write(b"fire 1073741824\n")
        await down.drain()
        got = 0
        while got < 4 * 1024 * 1024:
            got += len(await asyncio.wait_for(down_reader.read(1 << 20), 10))

        await s.tunnel.stop_relay()
        with pytest.raises(ConnectionResetError):
            while await asyncio.wait_for(down_reader.read(1 << 20), 20):
                pass
        s.target.release.set()  # the sink reads what reached it: a reset, never an end of stream
        await until(lambda: s.target.open == 0, "the apiserver side to be closed", 15)
        assert s.target.sunk == [], "a truncated upload reached the apiserver as a complete one"
        for writer in (up, down):
            writer.transport.abort()
