"""Tunnel benchmark: kubearc's cluster-connect tunnel next to a direct connection and `ssh -R`, in one run.

Why: DESIGN.md section 4 promises a tunnel that carries bulk data, keeps small requests quick
beside bulk streams and holds many idle streams cheaply; "speed is measured, not hoped". This
measures, on 127.0.0.1 with TLS on both relay hops (wss), for three paths to the same target:

- direct: the client straight to the target server (the floor of this machine and client);
- ssh -R: OpenSSH's reverse tunnel, what an admin would reach for (a private sshd on loopback);
- kubearc: client proxy -> relay -> agent, each its own process, the hub verifying credentials.

Figures: single- and 16-stream bulk throughput each way, 64-byte round trip p50/p99, the same
round trip beside a saturating bulk stream, and memory per idle stream with 10,000 streams open
(plus whether they all close cleanly). Paths are measured in alternating rounds so noise from
other work on the shared machine falls on all of them alike.

Run: `.venv/bin/python -m loadtest.bench_tunnel [--rounds 3] [--bulk-seconds 2] [--streams 10000]`.
See loadtest/README.md for what runs where and how to read the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import gc
import getpass
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from loadtest import Parser
from loadtest.procstat import cpu_seconds, free_port, machine_busy_seconds
from loadtest.wan import DC_ADDR, HUB_ADDR, Profile, WanLink

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SUB = "00000000-0000-0000-0000-00000000be02"
RG = "bench-tunnel"
CLUSTER = "bench-tunnel"
API = {"api-version": "2024-01-01"}
ONBOARDING_ROLE = "Kubernetes Cluster - Azure Arc Onboarding"
USER_ROLE = "Azure Arc Enabled Kubernetes Cluster User Role"
MB = 1_000_000
BLOCK = bytes(1 << 20)  # what bulk senders write per call
SOURCE_CHUNK = bytes(256 * 1024)  # what the target's source mode writes per call
REQUEST = 64
PATHS = ("direct", "ssh", "kubearc")
COMPONENTS = {"direct": (), "ssh": ("sshd", "ssh"), "kubearc": ("proxy", "relay", "agent")}
LABEL = {"direct": "direct", "ssh": "ssh -R", "kubearc": "kubearc"}
T = TypeVar("T")
Addr = tuple[str, int]  # (host, port): where a path, a stats port or the target listens


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop  # type: ignore[no-any-return]
    return asyncio.new_event_loop


def run_loop(coro: Coroutine[Any, Any, T], kind: str) -> T:
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(coro)


def raise_nofile(wanted: int) -> int:
    """10,000 streams need 10,000+ descriptors in the client, the proxy, the agent and the target."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


# --------------------------------------------------------------------------- /proc readings


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(root: int) -> list[int]:
    """`root` and every process below it (sshd forks a process per connection)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


# --------------------------------------------------------------------------- helper processes
# The target server, the tunnel components and the background bulk sender run as
# `python -m loadtest.bench_tunnel --role NAME --role-config FILE`, each on its own event loop.


def write_ready(cfg: dict[str, Any], doc: dict[str, Any]) -> None:
    path = Path(cfg["ready"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**doc, "pid": os.getpid()}))
    tmp.rename(path)


async def orphan_watch() -> None:
    """Helpers exit when the benchmark does, even if it was killed without cleaning up."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 - there is no event for a parent's death
        await asyncio.sleep(1)
    os._exit(3)


class GcWatch:
    """The cyclic collector's pauses in this process: the longest one is a latency floor for p99."""

    def __init__(self) -> None:
        self.started = 0.0
        self.longest = 0.0
        self.total = 0.0
        self.full = 0
        gc.callbacks.append(self.callback)

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        pause = time.perf_counter() - self.started
        self.total += pause
        self.longest = max(self.longest, pause)
        self.full += info.get("generation") == 2

    def take(self) -> dict[str, float]:
        doc = {"gc_longest_ms": self.longest * 1000, "gc_total_ms": self.total * 1000, "gc_full": self.full}
        self.longest = 0.0
        return doc


async def serve_stats(collect: Callable[[], dict[str, Any]], host: str = HOST) -> asyncio.Server:
    """One JSON document per connection: how many streams, tasks and bytes a component holds now."""
    watch = GcWatch()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        doc = {
            "rss_kb": rss_kb(os.getpid()),
            "tasks": len(asyncio.all_tasks()),
            "objects": len(gc.get_objects()),
            **watch.take(),
            **collect(),
        }
        writer.write(json.dumps(doc).encode())
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, 0)


def mux_stats(muxes: list[Any]) -> dict[str, int]:
    """Streams held, and connection credit not yet given back (0 when idle and nothing leaked).

    Reads the sessions' counters directly: a receiver that drops data without crediting it
    starves its peer's connection window, and one that credits twice lets it overflow.
    """
    unreturned = 0
    for m in muxes:
        session = m.session
        unreturned += session.settings.connection_window - session._conn_recv_credit - session._conn_unacked
    return {
        "sessions": len(muxes),
        "streams": sum(len(m.streams) for m in muxes),
        "session_streams": sum(m.session.open_streams for m in muxes),
        "buffered": sum(s.buffered for m in muxes for s in m.streams.values()),
        "unreturned": unreturned,
    }


@dataclass
class TargetCounts:
    accepted: int = 0
    open: int = 0


class TargetProtocol(asyncio.Protocol):
    """The stand-in apiserver. The first byte picks the mode:

    E echo, S sink (reply with the byte count on EOF), D source (send until the client's EOF),
    C counters (JSON of accepted and open connections). A connection that sends nothing is idle.
    """

    def __init__(self, counts: TargetCounts) -> None:
        self.counts = counts
        self.mode = b""
        self.sunk = 0
        self.paused = False
        self.stopped = False
        self.closed = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport.set_write_buffer_limits(high=1 << 20)
        self.counts.accepted += 1
        self.counts.open += 1

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.mode:
            self.mode, data = data[:1], data[1:]
            if self.mode == b"C":
                self.counts.accepted -= 1
                self.counts.open -= 1
                self.closed = True  # not counted at connection_lost
                doc = {"accepted": self.counts.accepted, "open": self.counts.open}
                self.transport.write(json.dumps(doc).encode())
                self.transport.close()
                return
            if self.mode == b"D":
                self._fill()
        if self.mode == b"E":
            if data:
                self.transport.write(data)
        elif self.mode == b"S":
            self.sunk += len(data)

    def _fill(self) -> None:
        # A bounded burst per callback: loopback may take everything without ever pausing us.
        if self.closed or self.stopped or self.paused or self.transport is None:
            return
        for _ in range(8):
            self.transport.write(SOURCE_CHUNK)
            if self.paused:
                return
        asyncio.get_running_loop().call_soon(self._fill)

    def eof_received(self) -> bool | None:
        assert self.transport is not None
        if self.mode == b"S":
            self.transport.write(self.sunk.to_bytes(8, "big"))
        self.stopped = True  # source: stop filling; the FIN follows what is buffered
        return None  # close (with a FIN) once what is buffered is flushed

    def pause_writing(self) -> None:
        self.paused = True
        if self.mode == b"E" and self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.mode == b"E" and self.transport is not None:
            self.transport.resume_reading()
        elif self.mode == b"D":
            self._fill()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.counts.open -= 1


async def role_target(cfg: dict[str, Any]) -> None:
    counts = TargetCounts()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: TargetProtocol(counts), cfg.get("bind", HOST), 0, backlog=4096)
    write_ready(cfg, {"port": server.sockets[0].getsockname()[1]})
    async with server:
        await server.serve_forever()


async def role_relay(cfg: dict[str, Any]) -> None:
    """What `kubearc relay` builds (default settings), plus a stats port."""
    from proxy.relay import Relay
    from proxy.relay_auth import HubAuth
    from proxy.relay_server import RelayServer

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cfg["cert"], cfg["key"])
    relay = Relay(replica_id="relay-bench")
    server = await RelayServer(
        relay, HubAuth(cfg["hub_url"], cfg["hub_ca"]), cfg.get("bind", HOST), cfg["port"], context
    ).start()

    def collect() -> dict[str, Any]:
        agents = relay.agent_muxes()
        return {
            **mux_stats([*relay.client_muxes, *agents]),
            "agents": len(agents),
            "clients": len(relay.client_muxes),
        }

    stats = await serve_stats(collect, cfg.get("bind", HOST))
    write_ready(cfg, {"port": cfg["port"], "stats_port": stats.sockets[0].getsockname()[1]})
    async with server, stats:
        await server.serve_forever()


async def role_agent(cfg: dict[str, Any]) -> None:
    """What `kubearc agent connect` builds (default settings), plus a stats port."""
    from foundation import pki, tokens
    from proxy.agent import ConnectAgent

    pair = pki.KeyPair.read(Path(cfg["cert"]), Path(cfg["key"]))

    async def token() -> str:
        return tokens.make_agent_token(pair, cfg["hub_url"])

    agent = ConnectAgent(cfg["relay_url"], token, (HOST, cfg["target_port"]), cfg["ca"])
    task = asyncio.create_task(agent.run())
    stats = await serve_stats(
        lambda: {**mux_stats(list(agent.muxes)), "live": agent.live, "started": agent.sessions_started},
        cfg.get("bind", HOST),
    )
    write_ready(cfg, {"stats_port": stats.sockets[0].getsockname()[1]})
    async with stats:
        await task


async def role_proxy(cfg: dict[str, Any]) -> None:
    """What `kubearc proxy` builds (default settings, credentials from the hub), plus a stats port."""

    import httpx

    from proxy.client import ClientProxy, Credential

    verify = ssl.create_default_context(cafile=cfg["ca"])

    async def credentials() -> Credential:
        async with httpx.AsyncClient(verify=verify, timeout=30) as client:
            r = await client.post(
                f"{cfg['hub_url']}{cfg['rid']}/listClusterUserCredential",
                headers={"Authorization": f"Bearer {cfg['user_token']}"},
            )
        r.raise_for_status()
        return Credential.from_arm(r.json())

    proxy = ClientProxy(credentials, port=0, relay_ca_file=cfg["ca"])
    bound: list[int] = []
    listening = asyncio.Event()

    def ready(port: int) -> None:
        bound.append(port)
        listening.set()

    task = asyncio.create_task(proxy.run(ready))
    await listening.wait()

    def collect() -> dict[str, Any]:
        mux = proxy.mux
        if mux is None:
            return {"up": False, **mux_stats([])}
        ssl_object = getattr(mux.transport, "transport", None)
        info = ssl_object.get_extra_info("ssl_object") if ssl_object is not None else None
        cipher = f"{info.version()} {info.cipher()[0]}" if info is not None else "?"
        return {"up": mux.hello.done(), "cipher": cipher, "session": id(mux), **mux_stats([mux])}

    stats = await serve_stats(collect)
    write_ready(cfg, {"port": bound[0], "stats_port": stats.sockets[0].getsockname()[1]})
    async with stats:
        await task


async def role_bulk(cfg: dict[str, Any]) -> None:
    """The saturating stream beside the latency probe: its own process, so it takes no time from the probe."""
    started = Path(cfg["started"])
    if cfg["direction"] == "down":
        done, elapsed = await download(tuple(cfg["addr"]), 1, cfg["seconds"], warmup=0.3, started=started)
    else:
        done, elapsed = await upload(tuple(cfg["addr"]), cfg["seconds"], started=started)
    write_ready(cfg, {"bytes": done, "seconds": elapsed})


ROLES: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, None]]] = {
    "target": role_target,
    "relay": role_relay,
    "agent": role_agent,
    "proxy": role_proxy,
    "bulk": role_bulk,
}


def run_role(name: str, config: Path) -> int:
    from foundation.logs import setup_logging

    cfg = json.loads(config.read_text())
    raise_nofile(cfg.get("nofile", 0))
    setup_logging("warning", "text")  # as the kubearc commands log, extras (codes, reasons) included

    async def main() -> None:
        watch = asyncio.create_task(orphan_watch())
        try:
            await ROLES[name](cfg)
        finally:
            watch.cancel()

    with contextlib.suppress(KeyboardInterrupt):
        run_loop(main(), cfg["loop"])
    return 0


# --------------------------------------------------------------------------- measuring client


def mark(path: Path) -> None:
    """Tell the benchmark (another process) that the bulk stream is flowing."""
    path.touch()


class Bulk(asyncio.Protocol):
    """Client end of a bulk transfer: counts what arrives (no copies) and honours write backpressure."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.received = 0
        self.reply = bytearray()
        self.last_at = 0.0
        self.writable = asyncio.Event()
        self.writable.set()
        self.first: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.want = 0  # transfer_down: `reached` is set once this many bytes arrived
        self.reached: asyncio.Future[None] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.last_at = time.perf_counter()
        if len(self.reply) < 8:
            self.reply += data[:8]
        if not self.first.done():
            self.first.set_result(None)
        if self.want and self.received >= self.want and not self.reached.done():
            self.reached.set_result(None)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.first.done():
            self.first.set_exception(ConnectionError("closed before any data"))
            self.first.exception()  # uploads never await it
        if not self.reached.done():
            self.reached.set_exception(ConnectionError(f"closed after {self.received} bytes"))
            self.reached.exception()


async def upload(addr: Addr, seconds: float, started: Path | None = None) -> tuple[int, float]:
    """Send for `seconds`, half-close, and wait for the target's count: bytes that really arrived."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(Bulk, *addr)
    transport.set_write_buffer_limits(high=4 << 20)
    start = time.perf_counter()
    end = start + seconds
    transport.write(b"S")
    writes = 0
    while time.perf_counter() < end and not proto.closed.done():
        transport.write(BLOCK)
        writes += 1
        await proto.writable.wait()
        if writes % 8 == 0:
            await asyncio.sleep(0)
        if started is not None and writes == 16:
            mark(started)
    if proto.closed.done():
        raise ConnectionError(f"{addr} closed the upload")
    transport.write_eof()
    await asyncio.wait_for(proto.closed, 120)
    if len(proto.reply) < 8:
        raise ConnectionError(f"sink at {addr} gave no byte count")
    return int.from_bytes(proto.reply[:8], "big"), proto.last_at - start


async def download(
    addr: Addr,
    streams: int,
    seconds: float,
    warmup: float = 0.5,
    started: Path | None = None,
    abort: bool = False,
) -> tuple[int, float]:
    """Read `streams` source streams; count bytes over a common window after a warm-up.

    The end is graceful (our FIN, the target's FIN, in-flight data drained) unless `abort`:
    then the connections are reset with data in flight, as a Ctrl-C on `kubectl logs -f` does.
    """
    loop = asyncio.get_running_loop()
    conns = [await loop.create_connection(Bulk, *addr) for _ in range(streams)]
    try:
        for transport, _ in conns:
            transport.write(b"D")
        await settled([p.first for _, p in conns], 30, "no data")
        await asyncio.sleep(warmup)
        if started is not None:
            mark(started)
        c0, t0 = sum(p.received for _, p in conns), time.perf_counter()
        await asyncio.sleep(seconds)
        c1, t1 = sum(p.received for _, p in conns), time.perf_counter()
        if not abort:
            for transport, _ in conns:
                transport.write_eof()
            await settled([p.closed for _, p in conns], 60, "no end")
    finally:
        for transport, _ in conns:
            transport.abort()
    return c1 - c0, t1 - t0


async def transfer_down(addr: Addr, size: int) -> tuple[int, float]:
    """`size` bytes to the client on a new stream, timed from the connect to the last byte.

    A `kubectl cp` or a log dump: short enough that a window which grows slowly never reaches
    the link's bandwidth-delay product before the transfer ends.
    """
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    transport, proto = await loop.create_connection(Bulk, *addr)
    proto.want = size
    try:
        transport.write(b"D")
        await proto.reached
        return proto.received, proto.last_at - start
    finally:
        transport.abort()


async def transfer_up(addr: Addr, size: int) -> tuple[int, float]:
    """`size` bytes from the client on a new stream, timed from the connect to the target's count."""
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    transport, proto = await loop.create_connection(Bulk, *addr)
    transport.set_write_buffer_limits(high=4 << 20)
    transport.write(b"S")
    for offset in range(0, size, len(BLOCK)):
        transport.write(BLOCK[: min(len(BLOCK), size - offset)])
        await proto.writable.wait()
    transport.write_eof()
    await asyncio.wait_for(proto.closed, 120)
    if len(proto.reply) < 8:
        raise ConnectionError(f"sink at {addr} gave no byte count")
    return int.from_bytes(proto.reply[:8], "big"), proto.last_at - start


async def settled(futures: list[asyncio.Future[None]], limit: float, what: str) -> None:
    """Wait for all `futures`; raise the first failure, or TimeoutError after `limit` seconds."""
    done, pending = await asyncio.wait(futures, timeout=limit)
    for future in done:
        exc = future.exception()
        if exc is not None:
            raise exc
    if pending:
        raise TimeoutError(f"{what} on {len(pending)} of {len(futures)} streams within {limit:g} s")


async def upload_many(addr: Addr, streams: int, seconds: float) -> tuple[int, float]:
    done = await asyncio.gather(*(upload(addr, seconds) for _ in range(streams)))
    return sum(n for n, _ in done), max(elapsed for _, elapsed in done)


async def round_trips(addr: Addr, count: int = 0, seconds: float = 0, interval: float = 0) -> list[float]:
    """64-byte echoes on one connection: `count` back to back, or paced by `interval` for `seconds`."""
    reader, writer = await asyncio.open_connection(*addr)
    message = os.urandom(REQUEST)
    out: list[float] = []
    try:
        writer.write(b"E" + message)
        await reader.readexactly(REQUEST)
        for _ in range(50):  # warm-up, not counted
            writer.write(message)
            await reader.readexactly(REQUEST)
        now = time.perf_counter()
        end, tick = now + seconds, now
        while (len(out) < count) if count else (time.perf_counter() < end):
            t = time.perf_counter_ns()
            writer.write(message)
            await reader.readexactly(REQUEST)
            out.append((time.perf_counter_ns() - t) / 1e6)
            if interval:
                tick += interval
                delay = tick - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    tick = time.perf_counter()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return out


class Idle(asyncio.Protocol):
    """An idle stream's client end: holds the connection, reads nothing."""


async def query(addr: Addr) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection(*addr)
    try:
        return dict(json.loads(await asyncio.wait_for(reader.read(), 10)))
    finally:
        writer.close()


async def target_counts(addr: Addr) -> dict[str, int]:
    reader, writer = await asyncio.open_connection(*addr)
    try:
        writer.write(b"C")
        return dict(json.loads(await asyncio.wait_for(reader.read(), 10)))
    finally:
        writer.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


# --------------------------------------------------------------------------- setting up the paths


def pdeathsig() -> None:
    """Children get SIGTERM when the benchmark dies (Linux), so a crash leaves nothing running."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    stats: Addr | None = None  # the component's stats port, where the benchmark reaches it
    port: int | None = None
    tree: bool = False  # count the whole process tree (sshd forks per connection)

    def pids(self) -> list[int]:
        return descendants(self.proc.pid) if self.tree else [self.proc.pid]

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    children: dict[str, Child] = field(default_factory=dict)
    addrs: dict[str, Addr] = field(default_factory=dict)  # path -> where the client connects
    link: WanLink | None = None  # --wan: the shaped link between the hub side and the data center
    notes: list[str] = field(default_factory=list)
    cipher: dict[str, str] = field(default_factory=dict)

    # ---- where things run: with --wan, the data-center side is another network namespace ------

    def host(self, side: str) -> str:
        """Where the benchmark reaches a listener on `side` (it runs on the hub side itself)."""
        return DC_ADDR if self.link is not None and side == "dc" else HOST

    @property
    def hub_host(self) -> str:
        """Where the data-center side reaches the hub side's listeners (relay, sshd)."""
        return HUB_ADDR if self.link is not None else HOST

    @property
    def listen_host(self) -> str:
        """What listeners bind: every address once the other side of a WAN link must reach them."""
        return "0.0.0.0" if self.link is not None else HOST

    def preexec(self, side: str) -> Callable[[], None]:
        link = self.link

        def setup() -> None:
            pdeathsig()
            if link is not None and side == "dc":
                link.enter("dc")

        return setup

    def spawn(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str] | None = None,
        tree: bool = False,
        side: str = "hub",
    ) -> Child:
        logfile = self.tmp / f"{name}.log"
        with logfile.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C reaches only the benchmark, which stops them in order
                preexec_fn=self.preexec(side),
            )
        child = Child(name, proc, logfile, tree=tree)
        self.children[name] = child
        return child

    def spawn_role(
        self, name: str, role: str, cfg: dict[str, Any], timeout: float = 60, side: str = "hub"
    ) -> Child:
        ready = self.tmp / f"{name}.ready"
        cfg = {"bind": self.listen_host, **cfg, "ready": str(ready), "loop": self.args.loop}
        cfg["nofile"] = self.args.streams + 1000
        path = self.tmp / f"{name}.json"
        path.write_text(json.dumps(cfg))
        cmd = [sys.executable, "-m", "loadtest.bench_tunnel", "--role", role, "--role-config", str(path)]
        child = self.spawn(name, cmd, side=side)
        doc = wait_file(ready, child, timeout)
        child.port = doc.get("port")
        child.stats = (self.host(side), doc["stats_port"]) if doc.get("stats_port") else None
        return child

    def stop_all(self) -> None:
        for child in reversed(list(self.children.values())):
            if child.proc.poll() is None:
                child.proc.terminate()
        for child in reversed(list(self.children.values())):
            try:
                child.proc.wait(10)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(5)

    # ---- kubearc --------------------------------------------------------------------------

    def start_kubearc(self) -> None:
        import httpx

        from foundation import pki, tokens
        from hub.resources import cluster_id

        hub_port, relay_port = free_port(), free_port()
        hub_url = f"https://localhost:{hub_port}"
        state = self.tmp / "hub"
        log("kubearc: bootstrapping the hub's state (keys, TLS, a user with the cluster roles)")
        user_token = run_loop(bootstrap(state, hub_port, [HUB_ADDR] if self.link else []), "asyncio")
        ca = str(state / "tls" / "ca.crt")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEARC_")}
        cmd = [sys.executable, "-m", "kubearc.cli", "hub", "--state-dir", str(state), "--port", str(hub_port)]
        cmd += ["--no-relay", "--relay-url", f"wss://localhost:{relay_port}", "--log-level", "warning"]
        hub = self.spawn("hub", cmd, env)
        verify = ssl.create_default_context(cafile=ca)
        deadline = time.monotonic() + 90
        while True:
            if hub.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {hub.proc.returncode}:\n{hub.tail()}")
            try:
                if httpx.get(f"{hub_url}/healthz", verify=verify, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"hub did not answer /healthz:\n{hub.tail()}")
            time.sleep(0.2)
        log("kubearc: registering and onboarding the cluster")
        rid = cluster_id(SUB, RG, CLUSTER)
        onboarding = pki.new_key()
        with httpx.Client(base_url=hub_url, verify=verify, timeout=30) as c:
            body = {
                "location": "local",
                "properties": {
                    "agentPublicKeyCertificate": pki.public_key_der_b64(onboarding.public_key()),
                    "distribution": "generic",
                },
            }
            r = c.put(rid, params=API, json=body, headers={"Authorization": f"Bearer {user_token}"})
            r.raise_for_status()
            key = pki.new_key()
            r = c.post(
                "/agent/v1/identity/certificate",
                json={
                    "resourceId": rid,
                    "assertion": tokens.make_onboarding_assertion(onboarding, rid, hub_url),
                    "csr": pki.make_csr(key, "agent").decode(),
                },
            )
            r.raise_for_status()
            pair = pki.KeyPair(key, pki.load_cert(r.json()["certificate"].encode()))
            pair.write(self.tmp / "agent.crt", self.tmp / "agent.key")
            r = c.put(
                "/agent/v1/metadata",
                json={
                    "clusterCertificateAuthority": pki.create_ca("bench apiserver").cert_pem.decode(),
                    "apiserverServerName": "kubernetes.default.svc",
                },
                headers={"Authorization": f"Bearer {tokens.make_agent_token(pair, hub_url)}"},
            )
            r.raise_for_status()
        log("kubearc: starting relay, agent and client proxy (one process each)")
        relay = self.spawn_role(
            "relay",
            "relay",
            {
                "hub_url": hub_url,
                "hub_ca": ca,
                "port": relay_port,
                "cert": str(state / "tls" / "tls.crt"),
                "key": str(state / "tls" / "tls.key"),
            },
        )
        self.spawn_role(
            "agent",
            "agent",
            {
                "hub_url": hub_url,
                "relay_url": f"wss://{self.hub_host}:{relay_port}/relay/v1/agent",
                "ca": ca,
                "cert": str(self.tmp / "agent.crt"),
                "key": str(self.tmp / "agent.key"),
                "target_port": self.addrs["direct"][1],
            },
            side="dc",
        )
        relay_stats = relay.stats
        assert relay_stats is not None
        poll_until(lambda: query_sync(relay_stats).get("agents", 0) >= 1, 30, "agent session at the relay")
        proxy = self.spawn_role(
            "proxy", "proxy", {"hub_url": hub_url, "ca": ca, "rid": rid, "user_token": user_token}
        )
        proxy_stats = proxy.stats
        assert proxy_stats is not None and proxy.port is not None
        poll_until(lambda: bool(query_sync(proxy_stats).get("up")), 30, "client proxy session")
        self.cipher["kubearc"] = str(query_sync(proxy_stats).get("cipher", "?"))
        self.addrs["kubearc"] = (HOST, proxy.port)

    # ---- ssh -R -------------------------------------------------------------------------------

    def start_ssh(self) -> None:
        sshd, ssh, keygen = (
            shutil.which("sshd", path="/usr/sbin:/usr/bin:/sbin"),
            shutil.which("ssh"),
            "ssh-keygen",
        )
        if sshd is None or ssh is None:
            raise RuntimeError("OpenSSH is missing: apt-get install -y openssh-server openssh-client")
        d = self.tmp / "ssh"
        d.mkdir(mode=0o700)
        for name in ("host_key", "client_key"):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
        shutil.copy(d / "client_key.pub", d / "authorized_keys")
        port, forward = free_port(), free_port()
        sshd_host = self.hub_host  # with --wan, ssh dials it from the data center
        (d / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {port}",
                    f"ListenAddress {sshd_host}",
                    f"HostKey {d / 'host_key'}",
                    f"PidFile {d / 'sshd.pid'}",
                    f"AuthorizedKeysFile {d / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "AllowTcpForwarding yes",
                    "X11Forwarding no",
                    "PrintMotd no",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        if not Path("/run/sshd").is_dir():  # sshd's privilege-separation directory (Debian)
            Path("/run/sshd").mkdir(mode=0o755)
            self.notes.append("created /run/sshd (sshd's privilege-separation directory)")
        log(f"ssh -R: private sshd on {sshd_host}:{port}, forwarding {HOST}:{forward} to the target")
        self.spawn("sshd", [sshd, "-D", "-e", "-f", str(d / "sshd_config")], tree=True)
        common = ["-p", str(port), "-i", str(d / "client_key"), "-F", "/dev/null"]
        common += [
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
        ]
        user_host = f"{getpass.getuser()}@{sshd_host}"
        poll_until(lambda: can_connect((sshd_host, port)), 15, "sshd listening")
        probe = subprocess.run(
            [ssh, "-v", *common, user_host, "true"], capture_output=True, text=True, timeout=30
        )
        for line in probe.stderr.splitlines():
            if "kex: server->client cipher:" in line:
                self.cipher["ssh"] = line.split("cipher:", 1)[1].split(" MAC")[0].strip()
        if probe.returncode != 0:
            raise RuntimeError(f"ssh to the private sshd failed:\n{probe.stderr[-2000:]}")
        cmd = [ssh, "-N", *common, "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR"]
        cmd += ["-R", f"{HOST}:{forward}:{HOST}:{self.addrs['direct'][1]}", user_host]
        self.spawn("ssh", cmd, side="dc")
        poll_until(lambda: can_connect((HOST, forward)), 15, "ssh -R forward listening")
        self.addrs["ssh"] = (HOST, forward)

    def pids_of(self, name: str) -> list[int]:
        if name == "bench":
            return [os.getpid()]
        if name == "link":
            forwarder = self.link.forwarder if self.link else None
            return [forwarder.pid] if forwarder else []
        child = self.children.get(name)
        return child.pids() if child else []

    def check_alive(self) -> None:
        for child in self.children.values():
            if child.proc.poll() is not None:
                raise RuntimeError(f"{child.name} exited ({child.proc.returncode}):\n{child.tail()}")


async def bootstrap(state_dir: Path, port: int, extra_names: list[str]) -> str:
    """The hub's store before the hub runs: keys, TLS, a user allowed to onboard and connect; its token.

    `extra_names` go into the serving certificate too (the relay's address across the WAN link).
    """
    from foundation import pki
    from hub.config import HubConfig
    from hub.context import open_hub
    from hub.issuer.tokens import issue_access_token
    from hub.rbac.assignments import create_assignment
    from hub.server import ensure_tls

    config = HubConfig(state_dir=state_dir, port=port)
    hub = await open_hub(config)
    try:
        if extra_names:  # made first: the hub keeps a certificate that already covers its own names
            pki.ensure_serving_pair(state_dir / "tls", ["localhost", "127.0.0.1", "::1", *extra_names])
        await ensure_tls(config, hub)
        oid = str(uuid.uuid4())
        async with hub.sessions() as session:
            for role in (ONBOARDING_ROLE, USER_ROLE):
                await create_assignment(session, f"/subscriptions/{SUB}", role, oid, "User")
        token, _ = issue_access_token(
            hub,
            oid=oid,
            audience=config.audiences[0],
            kind="user",
            client_id="kubearc-bench",
            upn="bench@kubearc.test",
            ttl=dt.timedelta(hours=6),
        )
        return token
    finally:
        await hub.close()


def wait_file(path: Path, child: Child, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited ({child.proc.returncode}):\n{child.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} not ready within {timeout:.0f} s:\n{child.tail()}")
        time.sleep(0.05)
    return dict(json.loads(path.read_text()))


def poll_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def can_connect(addr: Addr) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(addr, timeout=1):
        return True
    return False


def query_sync(addr: Addr) -> dict[str, Any]:
    with socket.create_connection(addr, timeout=10) as s:
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return dict(json.loads(b"".join(chunks)))


# --------------------------------------------------------------------------- measurements


@dataclass
class IdleResult:
    opened: int = 0
    open_seconds: float = 0.0
    rss_kb: dict[str, int] = field(default_factory=dict)  # component -> delta with all streams open
    after_close_kb: dict[str, int] = field(default_factory=dict)  # component -> delta after closing
    close_seconds: float = 0.0
    clean: bool = False
    detail: str = ""


@dataclass
class Results:
    rates: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (test, path) -> MB/s
    rtt: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (test, path) -> ms samples
    cpu: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)  # core-seconds
    wall: dict[tuple[str, str], float] = field(default_factory=dict)
    idle: dict[str, IdleResult] = field(default_factory=dict)
    after_aborts: dict[str, tuple[int, float | None]] = field(default_factory=dict)  # resets, MB/s after
    state_before: dict[str, dict[str, Any]] = field(default_factory=dict)  # kubearc components' stats
    state_after: dict[str, dict[str, Any]] = field(default_factory=dict)
    state_aborts: dict[str, dict[str, Any]] = field(default_factory=dict)
    gc_pause: dict[tuple[str, str], float] = field(default_factory=dict)  # (test, component) -> ms
    warnings: list[str] = field(default_factory=list)


class Runner:
    """Runs the tests on one event loop, alternating paths round by round."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.args = bench.args
        self.res = Results()
        self.groups = ["bench", "target", "proxy", "relay", "agent", "sshd", "ssh", "link"]
        self.failed_in_a_row = dict.fromkeys(PATHS, 0)

    @contextlib.contextmanager
    def cpu(self, test: str, path: str) -> Iterator[None]:
        def sample() -> tuple[float, dict[str, float]]:
            snap = {g: cpu_seconds(self.bench.pids_of(g)) for g in self.groups}
            snap["all"] = machine_busy_seconds()
            return time.perf_counter(), snap

        t0, c0 = sample()
        yield
        t1, c1 = sample()
        acc = self.res.cpu.setdefault((test, path), {})
        for g in c1:
            acc[g] = acc.get(g, 0.0) + max(0.0, c1[g] - c0[g])
        self.res.wall[(test, path)] = self.res.wall.get((test, path), 0.0) + t1 - t0

    def order(self, rnd: int) -> list[str]:
        k = rnd % len(PATHS)
        return [*PATHS[k:], *PATHS[:k]]

    async def settle(self, what: str, limit: float = 30) -> None:
        """Between tests: wait until the target has no connection left from the previous one."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if (await target_counts(self.bench.addrs["direct"]))["open"] == 0:
                return
            await asyncio.sleep(0.05)
        self.res.warnings.append(f"after {what}: target still had connections open after {limit:.0f} s")

    async def attempt(self, what: str, path: str, coro: Coroutine[Any, Any, T], limit: float) -> T | None:
        """One measurement; a failure is reported and the run goes on (the path may recover).

        A path that failed twice in a row is not measured again: its figures stay empty.
        """
        if self.failed_in_a_row[path] >= 2:
            coro.close()
            return None
        try:
            result = await asyncio.wait_for(coro, limit)
            self.failed_in_a_row[path] = 0
            return result
        except (OSError, TimeoutError, RuntimeError, asyncio.IncompleteReadError) as exc:
            self.failed_in_a_row[path] += 1
            reason = str(exc) or "no answer within the time limit"
            self.res.warnings.append(f"{what} via {LABEL[path]} failed: {type(exc).__name__}: {reason}")
            if self.failed_in_a_row[path] == 2:
                self.res.warnings.append(f"{LABEL[path]} failed twice in a row: not measured any further")
            self.bench.check_alive()
            if path == "kubearc":  # the client proxy reconnects by itself; give it the time to
                proxy = self.bench.children["proxy"]
                assert proxy.stats is not None
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not (await query(proxy.stats)).get("up"):  # noqa: ASYNC110 - another process
                    await asyncio.sleep(0.2)
            await self.settle(f"failed {what} via {path}", 10)
            return None

    async def kubearc_state(self) -> dict[str, dict[str, Any]]:
        return await self.component_stats("kubearc")

    async def run(self) -> Results:
        a = self.args
        for path in PATHS:  # warm every path's code before anything is measured
            await round_trips(self.bench.addrs[path], count=200)
            await upload(self.bench.addrs[path], 0.3)
        await self.settle("warm-up")
        self.res.state_before = await self.kubearc_state()
        if a.streams:
            for path in PATHS:
                log(f"idle streams: {a.streams} through {LABEL[path]}")
                self.res.idle[path] = await self.idle(path)
                self.bench.check_alive()
        size = int(a.transfer_mb * MB)
        fns: list[Callable[[Addr], Coroutine[Any, Any, tuple[int, float]]]] = [
            lambda p: upload(p, a.bulk_seconds),
            lambda p: download(p, 1, a.bulk_seconds),
            lambda p: upload_many(p, a.parallel, a.bulk_seconds),
            lambda p: download(p, a.parallel, a.bulk_seconds),
            lambda p: transfer_up(p, size),
            lambda p: transfer_down(p, size),
        ]
        tests = list(zip(bulk_tests(a), fns, strict=True))
        for name, fn in tests:
            log(f"bulk {name}: {a.rounds} rounds x {a.bulk_seconds:g} s per path")
            for rnd in range(a.rounds):
                for path in self.order(rnd):
                    with self.cpu(name, path):
                        got = await self.attempt(name, path, fn(self.bench.addrs[path]), a.bulk_seconds + 30)
                    if got is not None:
                        self.res.rates.setdefault((name, path), []).append(got[0] / got[1] / MB)
                    await self.settle(f"{name} via {path}")
                    self.bench.check_alive()
        log(f"round trips: {a.rounds} rounds x {a.rtt_count} x {REQUEST} B per path")
        link_rtt = a.wan.rtt_ms / 1000 if a.wan else 0.0
        limit = 120 + 2 * a.rtt_count * link_rtt  # 2,000 back-to-back round trips at 80 ms take 160 s
        for rnd in range(a.rounds):
            for path in self.order(rnd):
                with self.cpu("rtt", path):
                    samples = await self.attempt(
                        "round trips", path, round_trips(self.bench.addrs[path], count=a.rtt_count), limit
                    )
                self.res.rtt.setdefault(("idle", path), []).extend(samples or [])
        for direction in a.loaded:
            log(f"round trips beside a bulk stream {direction}: {a.rounds} rounds x {a.loaded_seconds:g} s")
            for rnd in range(a.rounds):
                for path in self.order(rnd):
                    await self.attempt(f"beside bulk {direction}", path, self.loaded(direction, path), 120)
                    await self.settle(f"loaded {direction} via {path}")
                    self.bench.check_alive()
        await self.settle("the tests")
        self.res.state_after = await self.kubearc_state()
        if a.aborts:
            log(f"aborts: {a.aborts} downloads reset with data in flight per path, then one more download")
            for path in PATHS:
                self.res.after_aborts[path] = await self.aborts(path)
            self.res.state_aborts = await self.kubearc_state()
        return self.res

    async def aborts(self, path: str) -> tuple[int, float | None]:
        """Reset downloads mid-flight (Ctrl-C on `kubectl logs -f`); the path must still carry data after.

        Returns how many resets went through before one failed, and the MB/s of a download after them.
        """
        addr = self.bench.addrs[path]
        for done in range(self.args.aborts):
            got = await self.attempt(
                "aborted download", path, download(addr, 1, 0.05, warmup=0.05, abort=True), 10
            )
            if got is None:  # the path stopped carrying data: say after how many resets
                return done, None
            await self.settle(f"aborted download via {path}", 10)
        got = await self.attempt("download after resets", path, download(addr, 1, 1.0), 20)
        return self.args.aborts, None if got is None else got[0] / got[1] / MB

    async def loaded(self, direction: str, path: str) -> None:
        a = self.args
        key = f"beside bulk {direction}"
        started = self.bench.tmp / f"bulk-{uuid.uuid4().hex[:6]}.started"
        cfg = {
            "addr": self.bench.addrs[path],
            "direction": direction,
            "seconds": a.loaded_seconds + 1.0,
            "started": str(started),
        }
        ready = self.bench.tmp / f"bulk-{started.stem}.ready"
        path_cfg = self.bench.tmp / f"bulk-{started.stem}.json"
        cfg = {**cfg, "ready": str(ready), "loop": a.loop, "nofile": 0}
        path_cfg.write_text(json.dumps(cfg))
        cmd = [
            sys.executable,
            "-m",
            "loadtest.bench_tunnel",
            "--role",
            "bulk",
            "--role-config",
            str(path_cfg),
        ]
        child = self.bench.spawn("bulk", cmd)
        try:
            deadline = time.monotonic() + 30
            while not started.exists():
                if child.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"bulk helper did not start:\n{child.tail()}")
                await asyncio.sleep(0.02)
            await self.component_stats(path)  # resets the components' longest-GC-pause figure
            with self.cpu(key, path):
                samples = await round_trips(
                    self.bench.addrs[path], seconds=a.loaded_seconds, interval=a.probe_interval / 1000
                )
            self.res.rtt.setdefault((key, path), []).extend(samples)
            for name, doc in (await self.component_stats(path)).items():
                worst = self.res.gc_pause.setdefault((key, name), 0.0)
                self.res.gc_pause[(key, name)] = max(worst, doc.get("gc_longest_ms", 0.0))
            while not ready.exists():
                if child.proc.poll() is not None and not ready.exists():
                    raise RuntimeError(f"bulk helper failed:\n{child.tail()}")
                await asyncio.sleep(0.05)
            doc = json.loads(ready.read_text())
            self.res.rates.setdefault((key, path), []).append(doc["bytes"] / doc["seconds"] / MB)
        finally:
            if child.proc.poll() is None:
                child.proc.terminate()
            await asyncio.to_thread(child.proc.wait, 10)
            del self.bench.children["bulk"]

    async def component_stats(self, path: str) -> dict[str, dict[str, Any]]:
        out = {}
        for name in COMPONENTS[path]:
            child = self.bench.children[name]
            if child.stats is not None:
                out[name] = await query(child.stats)
        return out

    async def idle(self, path: str) -> IdleResult:
        """Open N idle streams, wait until the target holds all N, read RSS; then close and check."""
        n, addr, target = self.args.streams, self.bench.addrs[path], self.bench.addrs["direct"]
        result = IdleResult()
        loop = asyncio.get_running_loop()
        names = COMPONENTS[path]

        def rss() -> dict[str, int]:
            return {name: sum(rss_kb(pid) for pid in self.bench.pids_of(name)) for name in names}

        before_stats = await self.component_stats(path)
        before = rss()
        conns: list[asyncio.BaseTransport] = []
        gate = asyncio.Semaphore(64)

        async def one() -> asyncio.BaseTransport:
            async with gate:
                for attempt in range(5):
                    try:
                        transport, _ = await loop.create_connection(Idle, *addr)
                        return transport
                    except OSError:
                        if attempt == 4:
                            raise
                        await asyncio.sleep(0.2)
            raise AssertionError("unreachable")

        async def target_open_at_least(want: int, limit: float) -> int:
            deadline = time.monotonic() + limit
            while True:
                have = (await target_counts(target))["open"]
                if have >= want or time.monotonic() > deadline:
                    return have
                await asyncio.sleep(0.005)

        start = time.perf_counter()
        try:
            for first in range(0, n, self.args.open_batch):
                batch = min(self.args.open_batch, n - first)
                conns.extend(await asyncio.gather(*(one() for _ in range(batch))))
                have = await target_open_at_least(len(conns), 60)
                if have < len(conns):
                    result.detail = f"only {have} of {len(conns)} streams reached the target"
                    break
            result.open_seconds = time.perf_counter() - start
            result.opened = (await target_counts(target))["open"]
            await asyncio.sleep(self.args.idle_settle)
            during = rss()
            during_stats = await self.component_stats(path)
            result.rss_kb = {k: during[k] - before[k] for k in names}
            mismatch = [
                f"{k} holds {v['streams']} streams"
                for k, v in during_stats.items()
                if v["streams"] - before_stats[k]["streams"] != len(conns) * (2 if k == "relay" else 1)
            ]
            if mismatch and not result.detail:
                result.detail = "; ".join(mismatch)
        finally:
            close_start = time.perf_counter()
            for transport in conns:
                transport.close()
        deadline = time.monotonic() + 60
        leftover = ""
        while time.monotonic() < deadline:
            target_open = (await target_counts(target))["open"]
            stats = await self.component_stats(path)
            busy = [
                f"{k}: {v['streams']} streams, {v['session_streams']} session streams, "
                f"{v['tasks'] - before_stats[k]['tasks']:+d} tasks"
                for k, v in stats.items()
                if v["streams"] or v["session_streams"] or v["tasks"] > before_stats[k]["tasks"] + 2
            ]
            leftover = "; ".join(([f"target: {target_open} open"] if target_open else []) + busy)
            if not leftover:
                break
            await asyncio.sleep(0.1)
        result.close_seconds = time.perf_counter() - close_start
        result.clean = not leftover and not result.detail and result.opened == n
        if leftover:
            result.detail = (result.detail + "; " if result.detail else "") + f"left after 60 s: {leftover}"
        await asyncio.sleep(1)
        after = rss()
        result.after_close_kb = {k: after[k] - before[k] for k in names}
        return result


# --------------------------------------------------------------------------- report


def bulk_tests(a: argparse.Namespace) -> list[str]:
    """The throughput tests' names, in the order they run and print."""
    return [
        "1 stream up",
        "1 stream down",
        f"{a.parallel} streams up",
        f"{a.parallel} streams down",
        f"{a.transfer_mb:g} MB up, new stream",
        f"{a.transfer_mb:g} MB down, new stream",
    ]


def fmt(value: float | None, digits: int = 2, width: int = 10) -> str:
    if value is None or value != value:
        return "-".rjust(width)
    return f"{value:{width}.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or a != a or b != b:
        return None
    return a / b


def health(bench: Bench, res: Results) -> list[str]:
    """Did the tunnel stay whole: same sessions, connection credit all given back, no failures logged."""
    lines = []
    before, after = res.state_before, res.state_after
    if before and after:
        same = before["proxy"].get("session") == after["proxy"].get("session")
        agent = f"{before['agent'].get('started')} -> {after['agent'].get('started')}"
        lines.append(
            f"client proxy kept its relay session: {'yes' if same else 'NO (reconnected)'}; "
            f"agent sessions started: {agent}"
        )
    for label, state in (("after the tests", after), (f"after {bench.args.aborts} resets", res.state_aborts)):
        if state:
            parts = ", ".join(f"{k} {v.get('unreturned', 0) / MB:.1f}" for k, v in state.items())
            lines.append(f"connection credit not given back {label} (MB, 0 = none leaked): {parts}")
    for name in COMPONENTS["kubearc"]:
        child = bench.children.get(name)
        if child is None:
            continue
        warnings = [
            line
            for line in child.log.read_text(errors="replace").splitlines()
            if line.startswith(("warning", "error", "critical"))
        ]
        if warnings:
            distinct = sorted(set(warnings))
            lines.append(f"{name} logged {len(warnings)} warnings, e.g. {distinct[0][:150]}")
            lines.extend(f"  also: {w[:150]}" for w in distinct[1:4])
    return lines


def report(bench: Bench, res: Results) -> list[str]:
    a = bench.args
    lines: list[str] = []
    out = lines.append
    out("")
    where = f"WAN link {bench.link.profile} (netns + TUN forwarder)" if bench.link else HOST
    out(
        f"kubearc tunnel benchmark: {where}, {os.cpu_count()} CPUs, event loop {a.loop}; "
        f"kubearc wss ({bench.cipher.get('kubearc', '?')}), ssh ({bench.cipher.get('ssh', '?')})"
    )
    out(
        f"rounds {a.rounds}, bulk {a.bulk_seconds:g} s, {a.rtt_count} round trips of {REQUEST} B per round, "
        f"beside bulk {a.loaded_seconds:g} s paced {a.probe_interval:g} ms, idle streams {a.streams}"
    )
    out("")
    out(f"{'':34}{'direct':>10}{'ssh -R':>10}{'kubearc':>10}{'kubearc/ssh':>13}")

    def med(test: str, path: str) -> float | None:
        values = res.rates.get((test, path))
        return statistics.median(values) if values else None

    link = bench.link.profile if bench.link else None
    for test in bulk_tests(a):
        vals = [med(test, p) for p in PATHS]
        out(
            f"{'bulk ' + test + ' MB/s':34}"
            + "".join(fmt(v, 1) for v in vals)
            + fmt(ratio(vals[2], vals[1]), 2, 13)
        )
        if link is not None:
            share = [None if v is None else 100 * v / link.rate_mb_s for v in vals]
            out(f"{'  % of the link rate':34}" + "".join(fmt(v, 0) for v in share))

    def pct(key: str, path: str, q: float) -> float | None:
        samples = res.rtt.get((key, path))
        return percentile(samples, q) if samples else None

    loaded_keys = [f"beside bulk {d}" for d in a.loaded]
    for key, title in [("idle", "round trip"), *((k, "round trip " + k) for k in loaded_keys)]:
        for q in (50, 99):
            vals = [pct(key, p, q) for p in PATHS]
            out(
                f"{f'{title} p{q} ms':34}"
                + "".join(fmt(v, 3) for v in vals)
                + fmt(ratio(vals[2], vals[1]), 2, 13)
            )
            added = [None] + [None if v is None or vals[0] is None else v - vals[0] for v in vals[1:]]
            out(f"{f'  added vs direct p{q} ms':34}" + "".join(fmt(v, 3) for v in added))
        if key != "idle":
            vals = [med(key, p) for p in PATHS]
            out(f"{'  bulk stream meanwhile MB/s':34}" + "".join(fmt(v, 1) for v in vals))
            pauses = ", ".join(
                f"{name} {res.gc_pause[(key, name)]:.1f}"
                for name in COMPONENTS["kubearc"]
                if (key, name) in res.gc_pause
            )
            if pauses:
                out(f"  kubearc: longest GC pause meanwhile (ms): {pauses}")
    if res.idle:
        n = a.streams
        per = {
            p: (sum(r.rss_kb.values()) * 1024 / n / 1000 if p != "direct" else None)
            for p, r in res.idle.items()
        }
        out(
            f"{'idle streams: KB per stream':34}"
            + "".join(fmt(per.get(p), 1) for p in PATHS)
            + fmt(ratio(per.get("kubearc"), per.get("ssh")), 2, 13)
        )
        for path in ("ssh", "kubearc"):
            r = res.idle.get(path)
            if r:
                parts = ", ".join(f"{k} {v * 1024 / n / 1000:.1f}" for k, v in r.rss_kb.items())
                back = ", ".join(f"{k} {v * 1024 / n / 1000:+.1f}" for k, v in r.after_close_kb.items())
                out(f"  {LABEL[path]}: {parts} KB/stream; after closing all: {back}")
        out(
            f"{'idle streams: all open after s':34}"
            + "".join(fmt(res.idle[p].open_seconds, 1) for p in PATHS)
        )
        out(
            f"{'idle streams: all closed after s':34}"
            + "".join(fmt(res.idle[p].close_seconds, 1) for p in PATHS)
        )
        out(
            f"{'idle streams: closed cleanly':34}"
            + "".join(("yes" if res.idle[p].clean else "NO").rjust(10) for p in PATHS)
        )
        for p in PATHS:
            if res.idle[p].detail:
                out(f"  {LABEL[p]}: {res.idle[p].detail}")
    if res.after_aborts:

        def after(path: str) -> str:
            resets, rate = res.after_aborts.get(path, (0, None))
            if rate is None:
                return f"stuck@{resets}".rjust(10)
            return fmt(rate, 1)

        out(f"{f'download after {a.aborts} resets MB/s':34}" + "".join(after(p) for p in PATHS))
    out("")
    out("kubearc health")
    for line in health(bench, res):
        out(f"  {line}")
    out("")
    out("targets (kubearc)")

    def check(name: str, value: str, ok: bool | None) -> None:
        verdict = "n/a" if ok is None else ("met" if ok else "MISSED")
        out(f"  {name:46}{value:>26}  {verdict}")

    # Issue 13's targets: against ssh -R on loopback (1x) and on the 20 ms / 1 Gbit/s link (1.5x);
    # shares of the link on the lossless profiles (80 % for one stream, 60 % for a 50 MB transfer).
    names = bulk_tests(a)
    versus_ssh = [(n, 1.0) for n in names[:4]] if link is None else []
    if link is not None and link.rtt_ms <= 20 and link.rate_bps >= 1e9:
        versus_ssh = [(n, 1.5) for n in names[:2]]
    for test, want in versus_ssh:
        speedup = ratio(med(test, "kubearc"), med(test, "ssh"))
        check(
            f"{test} >= {want:g}x ssh -R",
            fmt(speedup, 2, 0) + "x",
            None if speedup is None else speedup >= want,
        )
    if link is not None and link.loss == 0:
        for test, floor in ((names[0], 80), (names[1], 80), (names[4], 60), (names[5], 60)):
            v = med(test, "kubearc")
            got = None if v is None else 100 * v / link.rate_mb_s
            check(
                f"{test} >= {floor} % of the link",
                fmt(got, 0, 0) + " %",
                None if got is None else got >= floor,
            )
    p50 = [pct("idle", p, 50) for p in PATHS]
    p99 = [pct("idle", p, 99) for p in PATHS]
    added50 = None if p50[2] is None or p50[0] is None else p50[2] - p50[0]
    added99 = None if p99[2] is None or p99[0] is None else p99[2] - p99[0]
    if link is None:
        check(
            "added round trip p50 < 0.3 ms",
            fmt(added50, 3, 0) + " ms",
            None if added50 is None else added50 < 0.3,
        )
        check(
            "added round trip p99 < 2 ms",
            fmt(added99, 3, 0) + " ms",
            None if added99 is None else added99 < 2,
        )
    for key in loaded_keys:  # on a WAN link: beyond the link's own round trip
        v = pct(key, "kubearc", 99)
        v = None if v is None else v - (link.rtt_ms if link else 0)
        what = f"round trip p99 {key}" + (" - link RTT" if link else "")
        check(f"{what} < 10 ms", fmt(v, 3, 0) + " ms", None if v is None else v < 10)
    if "kubearc" in res.idle:
        v = sum(res.idle["kubearc"].rss_kb.values()) * 1024 / a.streams / 1000
        check("memory per idle stream <= 6 KB (proxy+relay+agent)", fmt(v, 1, 0) + " KB", v <= 6)
    out("")
    out("CPU, % of one core over each test (all = whole machine, 200 = both cores busy)")
    groups = {"direct": ["bench", "target"], "ssh": ["bench", "target", "sshd", "ssh"]}
    groups["kubearc"] = ["bench", "target", "proxy", "relay", "agent"]
    if link is not None:  # the forwarder's share: a router's work, done on this machine
        groups = {path: [*names, "link"] for path, names in groups.items()}
    for test in [*bulk_tests(a), "rtt", *loaded_keys]:
        for path in PATHS:
            cpu, wall = res.cpu.get((test, path)), res.wall.get((test, path))
            if not cpu or not wall:
                continue
            parts = " ".join(f"{g} {100 * cpu[g] / wall:3.0f}" for g in groups[path])
            out(f"  {test:20} {LABEL[path]:8} {parts}  | all {100 * cpu['all'] / wall:3.0f}")
    out("")
    out("CPU per MB moved, ms of one core (bulk tests; tunnel = its processes together, as sshd + ssh)")
    tunnel = {"ssh": ["sshd", "ssh"], "kubearc": ["proxy", "relay", "agent"]}
    relay_vs_sshd: list[tuple[float, float]] = []
    for test in bulk_tests(a):
        for path in PATHS:
            spent = cpu_per_mb(res, test, path)
            if spent is None:
                continue
            parts = " ".join(f"{g} {spent[g]:5.2f}" for g in groups[path])
            mine = f" | tunnel {sum(spent[g] for g in tunnel[path]):5.2f}" if path in tunnel else ""
            out(f"  {test:20} {LABEL[path]:8} {parts}{mine}")
        ours, theirs = cpu_per_mb(res, test, "kubearc"), cpu_per_mb(res, test, "ssh")
        if ours and theirs:
            relay_vs_sshd.append((ours["relay"], theirs["sshd"]))
    if relay_vs_sshd:
        relay, sshd = (statistics.median(v) for v in zip(*relay_vs_sshd, strict=True))
        check(
            "relay CPU per MB <= sshd's (median of the bulk tests)",
            f"{relay:.2f} vs {sshd:.2f} ms/MB",
            relay <= sshd,
        )
    for note in bench.notes + res.warnings:
        out(f"note: {note}")
    return lines


def cpu_per_mb(res: Results, test: str, path: str) -> dict[str, float] | None:
    """ms of CPU each process group spent per MB moved in `test` through `path`.

    The CPU is sampled over whole attempts (connect and warm-up included), the rate over the
    measured window; CPU time over wall time is a group's mean load, divided by the rate.
    """
    cpu, wall, rates = res.cpu.get((test, path)), res.wall.get((test, path)), res.rates.get((test, path))
    if not cpu or not wall or not rates:
        return None
    rate = statistics.mean(rates)  # MB/s
    return {g: 1000 * cpu[g] / wall / rate for g in cpu} if rate > 0 else None


# --------------------------------------------------------------------------- main


def hold(bench: Bench, seconds: float) -> int:
    """Keep every path up for a profiler or a manual test; print where they listen."""
    for path in PATHS:
        host, port = bench.addrs[path]
        print(f"{LABEL[path]:8} {host}:{port}")
    for child in bench.children.values():
        print(f"{child.name:8} pids {' '.join(map(str, child.pids()))}")
    sys.stdout.flush()
    time.sleep(seconds)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per test (paths rotate)")
    p.add_argument("--bulk-seconds", type=float, default=1.5, help="measured seconds per bulk transfer")
    p.add_argument("--parallel", type=int, default=16, help="streams in the multi-stream bulk tests")
    p.add_argument("--rtt-count", type=int, default=2000, help="round trips per path per round")
    p.add_argument("--loaded-seconds", type=float, default=2.0, help="probe seconds beside a bulk stream")
    p.add_argument(
        "--loaded", default="down,up", help="directions of the saturating bulk stream (down = to the client)"
    )
    p.add_argument("--probe-interval", type=float, default=2.0, help="ms between probes beside bulk")
    p.add_argument("--streams", type=int, default=10_000, help="idle streams for the memory test (0: skip)")
    p.add_argument(
        "--transfer-mb", type=float, default=50, help="size of the new-stream transfers (a kubectl cp), MB"
    )
    p.add_argument(
        "--wan",
        type=Profile.argument,
        metavar="RTT,RATE[,LOSS]",
        help="put the agent side behind a shaped link, e.g. 20ms,1gbit, 80ms,200mbit or 50ms,100mbit,0.5%%",
    )
    p.add_argument(
        "--open-batch",
        type=int,
        default=64,
        help="idle streams opened before waiting for them (keep it below the listeners' accept backlog)",
    )
    p.add_argument("--idle-settle", type=float, default=2.0, help="seconds before reading RSS")
    p.add_argument(
        "--aborts", type=int, default=20, help="downloads reset mid-flight at the end, per path (0: skip)"
    )
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default=default_loop())
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    p.add_argument(
        "--hold", type=float, default=0, help="measure nothing: keep the paths up for N s (profiling)"
    )
    p.add_argument("--role", help=argparse.SUPPRESS)
    p.add_argument("--role-config", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.loaded = [d for d in args.loaded.split(",") if d]
    if any(d not in ("up", "down") for d in args.loaded):
        p.error("--loaded takes up, down or both")
    return args


def default_loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        return run_role(args.role, args.role_config)
    nofile = raise_nofile(args.streams + 1000)
    if nofile < args.streams + 200:
        print(
            f"error: RLIMIT_NOFILE hard limit {nofile} is too low for {args.streams} streams", file=sys.stderr
        )
        return 2

    # Ctrl-C, `timeout` and kill all stop everything and tear the WAN link down, also when the
    # benchmark was started as a shell's background job (which starts it with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    tmp = Path(tempfile.mkdtemp(prefix="kubearc-bench-tunnel-"))
    bench = Bench(args, tmp)
    started = time.monotonic()
    try:
        if args.wan is not None:
            log(f"WAN link: {args.wan}; the agent, the target and ssh in the data-center namespace")
            try:
                bench.link = WanLink(args.wan, tmp).open()
            except (OSError, RuntimeError) as exc:
                log(f"error: no WAN link ({exc}); --wan needs root: ip netns, tc, /dev/net/tun")
                return 2
            bench.link.enter("hub")  # the benchmark itself (the client) and what it starts: the hub side
        log(f"target server (echo/sink/source) in its own process; temp dir {tmp}")
        target = bench.spawn_role("target", "target", {}, side="dc")
        assert target.port is not None
        bench.addrs["direct"] = (bench.host("dc"), target.port)
        bench.start_kubearc()
        bench.start_ssh()
        if args.hold:
            return hold(bench, args.hold)
        results = run_loop(Runner(bench).run(), args.loop)
        for line in report(bench, results):
            print(line)
        log(f"done in {time.monotonic() - started:.0f} s")
        return 0
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    except Exception as exc:
        log(f"failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        for child in bench.children.values():
            if child.proc.poll() is not None:
                log(f"{child.name} log tail:\n{child.tail()}")
        return 1
    finally:
        bench.stop_all()
        if bench.link is not None:
            bench.link.close()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
