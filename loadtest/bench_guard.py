"""guard benchmark: reviews per second and latency next to a no-op endpoint of the same server stack.

Why: guard sits on the apiserver's request path (every request the apiserver has
not cached waits for it), so "speed is measured, not hoped". One run starts a
real hub (`kubearc hub`, its own process), registers and onboards a cluster, and
runs `kubearc guard serve` in its own process with Azure RBAC against the hub
(identity store credential, mutual TLS, uvicorn, the JSON audit log) plus ONE
extra route, `POST /noop`, added only in that benchmark process: it reads the
body and answers a constant, through the same uvicorn, TLS, Starlette and metrics
middleware. That no-op is the ceiling of the stack; the gap to it is guard's own
work. Targets (guard issue): warm reviews >= 60 % of the no-op ceiling, and p99 <
5 ms at an offered 1,000 req/s.

Run: `.venv/bin/python -m loadtest.bench_guard [--seconds 3] [--rounds 3] [--procs 2]`;
`--serve` brings the stack up for locust or py-spy and measures nothing. See loadtest/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from loadtest import Parser
from loadtest.procstat import cpu_seconds, free_port, machine_busy_seconds

ROOT = Path(__file__).resolve().parents[1]
SUB = "00000000-0000-0000-0000-00000000be02"
RG = "bench"
CLUSTER = "guard-bench"
CC = "Microsoft.Kubernetes/connectedClusters"
AUDIENCE = "api://kubearc-hub"
ONBOARDING_ROLE = "Kubernetes Cluster - Azure Arc Onboarding"
VIEWER_ROLE = "Azure Arc Kubernetes Viewer"
NAN = float("nan")
WARMUP = 0.3  # seconds per measured slice before counting
T = TypeVar("T")

# What each endpoint must answer for a request to count as ok (JSONResponse writes compact JSON).
AUTHENTICATED = b'"authenticated":true'
ALLOWED = b'"allowed":true'
NOOP_ANSWER = b'{"ok":true}'


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- review bodies


def token_review(token: str) -> bytes:
    """The TokenReview kube-apiserver posts."""
    return json.dumps(
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": None},
            "spec": {"token": token, "audiences": ["https://kubernetes.default.svc"]},
            "status": {"user": {}},
        },
        separators=(",", ":"),
    ).encode()


def access_review(oid: str, groups: list[str], namespace: str = "dev") -> bytes:
    """The SubjectAccessReview kube-apiserver posts for `get pods -n dev` by an Entra user."""
    return json.dumps(
        {
            "kind": "SubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": {
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": "get",
                    "version": "v1",
                    "resource": "pods",
                },
                "user": f"{oid[:8]}@kubearc.test",
                "groups": [*groups, "system:authenticated"],
                "extra": {"oid": [oid]},
                "uid": oid,
            },
            "status": {"allowed": False},
        },
        separators=(",", ":"),
    ).encode()


def post(path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: guard\r\nContent-Type: application/json\r\n"
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


# --------------------------------------------------------------------------- load generator
# Runs in spawned processes: imports nothing from kubearc.


@dataclass
class Phase:
    """One slice of load on one endpoint, closed loop (as fast as answered) or open loop (fixed rate)."""

    label: str
    port: int
    tls: dict[str, str]  # ca, cert, key
    path: str
    expect: bytes
    connections: int
    bodies: list[bytes] = field(default_factory=list)  # cycled (fixed) or used once each (fresh)
    once: bool = False  # each body once: distinct tokens
    fresh_sar_groups: list[str] | None = None  # build a SAR with a new oid per request
    rate: float = 0.0  # open loop when > 0: requests per second from this process
    warmup: float = WARMUP
    duration: float = 3.0
    start_at: float = 0.0
    seed: int = 0  # makes fresh oids distinct across processes and slices
    watch: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class Outcome:
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds, requests done in the window
    lags: list[float] = field(default_factory=list)  # open loop: send time minus intended time
    served: list[float] = field(default_factory=list)  # open loop: answer time minus actual send time
    offered: int = 0  # open loop: requests scheduled in the window
    window: float = 0.0
    cpu: float = 0.0  # load-generator CPU seconds in the window
    watched: dict[str, float] = field(default_factory=dict)
    exhausted: bool = False  # `once` bodies ran out before the slice's end


class HttpConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection over TLS, one request at a time (as the apiserver's client).

    Raw asyncio protocol: a few microseconds of parsing per answer, so the load generator costs a
    fraction of what the server spends (httpx would cost more than guard itself)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.need = -1
        self.body_at = 0
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            self.status = int(head[9:12])
            i = head.find(b"content-length:")
            j = head.find(b"\r\n", i)
            self.body_at = end + 4
            self.need = (
                self.body_at + int(head[i + 15 : j if j > 0 else len(head)]) if i >= 0 else self.body_at
            )
        if len(self.buf) >= self.need:
            body = bytes(self.buf[self.body_at : self.need])
            del self.buf[: self.need]
            self.need = -1
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result((self.status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


async def _connect(p: Phase) -> list[HttpConn]:
    ctx = ssl.create_default_context(cafile=p.tls["ca"])
    ctx.load_cert_chain(p.tls["cert"], p.tls["key"])
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(p.connections):
        _, proto = await loop.create_connection(
            HttpConn, "127.0.0.1", p.port, ssl=ctx, server_hostname="127.0.0.1"
        )
        conns.append(proto)
    return conns


async def _drive(p: Phase) -> Outcome:
    out = Outcome()
    conns = await _connect(p)  # TLS handshakes before the clock starts
    bodies = [post(p.path, b) for b in p.bodies]
    fresh_parts: list[bytes] = []
    if p.fresh_sar_groups is not None:
        marker = "00000000-0000-0000-0000-00000000cafe"
        # The oid appears in user, extra.oid and uid, always 36 characters: Content-Length holds.
        fresh_parts = post(p.path, access_review(marker, p.fresh_sar_groups)).split(marker.encode())
    counter = 0

    def next_body(i: int) -> bytes | None:
        nonlocal counter
        if p.fresh_sar_groups is not None:
            counter += 1
            oid = str(uuid.UUID(int=(p.seed << 40) | counter)).encode()
            return oid.join(fresh_parts)
        if p.once:
            return bodies[i] if i < len(bodies) else None
        return bodies[i % len(bodies)]

    await asyncio.sleep(max(0.0, p.start_at - time.time()))
    start = time.perf_counter()
    measure_from = start + p.warmup
    stop = measure_from + p.duration
    marks: dict[str, tuple[float, float, dict[str, float]]] = {}

    def mark(name: str) -> None:
        marks[name] = (
            time.perf_counter(),
            time.process_time(),
            {"machine": machine_busy_seconds(), **{k: cpu_seconds(v) for k, v in p.watch.items()}},
        )

    def record(kind: str, value: str) -> None:
        out.errors[kind] += 1
        out.samples.setdefault(kind, value[:300])

    async def one(conn: HttpConn, data: bytes, t0: float) -> None:
        sent = time.perf_counter()
        try:
            status, body = await conn.request(data)
        except ConnectionError as exc:
            record("connection", str(exc))
            return
        t1 = time.perf_counter()
        if status != 200 or p.expect not in body:
            record(f"HTTP {status}" if status != 200 else "unexpected answer", body.decode(errors="replace"))
        elif t0 >= measure_from and t1 <= stop + 5:
            out.ok += 1
            out.latencies.append(t1 - t0)
            if p.rate > 0:
                out.served.append(t1 - sent)

    issued = 0
    if p.rate <= 0:

        async def worker(conn: HttpConn) -> None:
            nonlocal issued
            while time.perf_counter() < stop:
                data = next_body(issued)
                if data is None:
                    out.exhausted = True
                    return
                issued += 1
                await one(conn, data, time.perf_counter())

        async def watcher() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            mark("from")

        timer = asyncio.create_task(watcher())
        await asyncio.gather(*(worker(c) for c in conns))
        await timer
        mark("to")
    else:
        idle: asyncio.Queue[HttpConn] = asyncio.Queue()
        for c in conns:
            idle.put_nowait(c)
        pending: set[asyncio.Task[None]] = set()

        async def fire(conn: HttpConn, data: bytes, intended: float) -> None:
            try:
                await one(conn, data, intended)  # latency from the intended send time: no omission
            finally:
                idle.put_nowait(conn)

        total = int((p.warmup + p.duration) * p.rate)
        measured_mark = False
        for i in range(total):
            intended = start + i / p.rate
            if not measured_mark and intended >= measure_from:
                mark("from")
                measured_mark = True
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            conn = await idle.get()
            data = next_body(i)
            if data is None:
                out.exhausted = True
                break
            if intended >= measure_from:
                out.offered += 1
                out.lags.append(time.perf_counter() - intended)
            task = asyncio.create_task(fire(conn, data, intended))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        mark("to")
        if not measured_mark:
            marks["from"] = marks["to"]
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    (t_from, c_from, w_from), (t_to, c_to, w_to) = marks["from"], marks["to"]
    out.window = t_to - t_from
    out.cpu = c_to - c_from
    out.watched = {k: w_to[k] - w_from[k] for k in w_to}
    return out


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def run_phase(phase: Phase) -> Outcome:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_drive(phase))


def _ready(_: int) -> int:
    return os.getpid()


def merge(parts: list[Outcome]) -> Outcome:
    """Outcomes of load-generator processes that ran side by side over the same window."""
    out = Outcome()
    for part in parts:
        out.ok += part.ok
        out.errors.update(part.errors)
        for kind, message in part.samples.items():
            out.samples.setdefault(kind, message)
        out.latencies.extend(part.latencies)
        out.lags.extend(part.lags)
        out.served.extend(part.served)
        out.offered += part.offered
        out.cpu += part.cpu
        out.exhausted = out.exhausted or part.exhausted
        out.window = max(out.window, part.window)
        for name, seconds in part.watched.items():
            out.watched[name] = max(out.watched.get(name, 0.0), seconds)  # all sampled the same pids
    return out


def merge_serial(parts: list[Outcome]) -> Outcome:
    """Slices that ran one after another."""
    out = merge(parts)
    out.window = sum(p.window for p in parts)
    out.watched = {k: sum(p.watched.get(k, 0.0) for p in parts) for k in parts[0].watched} if parts else {}
    return out


class LoadGen:
    """Splits each phase over `procs` spawned processes that start at one instant."""

    def __init__(self, procs: int) -> None:
        self.procs = procs
        self.pool = ProcessPoolExecutor(procs, mp_context=mp.get_context("spawn"))
        list(self.pool.map(_ready, range(procs)))  # spawn and import before anything is timed

    def run(self, phase: Phase, procs: int | None = None) -> Outcome:
        k = min(procs or self.procs, self.procs)
        start_at = time.time() + 0.5
        parts = []
        for j in range(k):
            conns = phase.connections // k + (1 if j < phase.connections % k else 0)
            bodies = phase.bodies[j::k] if phase.once else phase.bodies
            parts.append(
                replace(
                    phase,
                    connections=max(1, conns),
                    bodies=bodies,
                    rate=phase.rate / k,
                    start_at=start_at,
                    seed=phase.seed * 64 + j,
                )
            )
        return merge(list(self.pool.map(run_phase, parts)))

    def close(self) -> None:
        self.pool.shutdown()


# --------------------------------------------------------------------------- the stack


def pdeathsig() -> None:
    """Children get SIGTERM when the benchmark dies (Linux), so a crash leaves nothing running."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def arun(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass
class Minted:
    issuer: str
    warm_oid: str
    group: str
    warm_token: str
    cold_tokens: list[str]
    onboarder_token: str


async def bootstrap(state_dir: Path, port: int, rid: str, cold: int) -> Minted:
    """The hub's store before the hub runs: keys, TLS, role assignments, and the users' tokens.

    Tokens are minted with the hub's own signer (`hub.issuer.tokens.issue_access_token`, what its
    token endpoint calls after checking a password): msal's password grant costs a password hash
    per token on the hub, which would make minting thousands of distinct tokens the slow part of
    the run and measure nothing about guard. guard verifies them against the JWKS it fetches
    from the hub like any other token of that issuer.
    """
    from hub.config import HubConfig
    from hub.context import open_hub
    from hub.issuer.tokens import issue_access_token
    from hub.rbac.assignments import create_assignment
    from hub.server import ensure_tls

    config = HubConfig(state_dir=state_dir, port=port)
    hub = await open_hub(config)
    try:
        await ensure_tls(config, hub)
        onboarder, warm, group = (str(uuid.uuid4()) for _ in range(3))
        async with hub.sessions() as session:
            await create_assignment(session, f"/subscriptions/{SUB}", ONBOARDING_ROLE, onboarder, "User")
            # Every benchmark user is in `group`, which may read the cluster: each SAR is Allowed.
            await create_assignment(session, rid, VIEWER_ROLE, group, "Group")

        def mint(oid: str, groups: list[str] | None = None) -> str:
            token, _ = issue_access_token(
                hub,
                oid=oid,
                audience=AUDIENCE,
                kind="user",
                client_id="kubearc-bench",
                upn=f"{oid[:8]}@kubearc.test",
                groups=groups,
                ttl=dt.timedelta(hours=2),
            )
            return token

        t = time.perf_counter()
        cold_tokens = [mint(str(uuid.uuid4()), [group]) for _ in range(cold)]
        log(f"{cold} distinct user tokens minted in {time.perf_counter() - t:.1f} s")
        return Minted(hub.issuer, warm, group, mint(warm, [group]), cold_tokens, mint(onboarder))
    finally:
        await hub.close()


def write_tls(where: Path) -> dict[str, str]:
    """guard's serving pair and CA, and the apiserver's client pair from its own CA."""
    from foundation import pki

    server_ca, client_ca = pki.create_ca("guard bench CA"), pki.create_ca("apiserver bench CA")
    server_ca.write(where / "ca.crt", where / "ca.key")
    client_ca.write(where / "client-ca.crt", where / "client-ca.key")
    pki.issue_keypair(server_ca, "guard", sans=["127.0.0.1"], server=True).write(
        where / "tls.crt", where / "tls.key"
    )
    pki.issue_keypair(client_ca, "apiserver", client=True).write(where / "c.crt", where / "c.key")
    return {"ca": str(where / "ca.crt"), "cert": str(where / "c.crt"), "key": str(where / "c.key")}


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Stack:
    """Hub, cluster, identity store and guard, each process started as an operator would."""

    def __init__(self, tmp: Path, cold: int) -> None:
        self.tmp, self.cold = tmp, cold
        self.children: list[Child] = []
        self.hub_port, self.guard_port, self.health_port = free_port(), free_port(), free_port()
        self.hub_url = f"https://localhost:{self.hub_port}"
        self.rid = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/{CC}/{CLUSTER}"
        self.tls: dict[str, str] = {}
        self.minted: Minted | None = None

    def spawn(self, name: str, cmd: list[str]) -> Child:
        logfile = self.tmp / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEARC_")}
        with logfile.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=pdeathsig,
            )
        child = Child(name, proc, logfile)
        self.children.append(child)
        return child

    def wait(self, child: Child, check: Callable[[], bool], what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if child.proc.poll() is not None:
                raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.tail()}")
            with contextlib.suppress(Exception):
                if check():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} within {timeout:.0f} s:\n{child.tail()}")
            time.sleep(0.2)

    def start(self) -> None:
        import httpx

        from foundation import pki, tokens
        from foundation.identitystore import FileStore, StoredIdentity

        state = self.tmp / "hub"
        log("bootstrapping the hub's store (keys, TLS, role assignments, tokens)")
        self.minted = minted = arun(bootstrap(state, self.hub_port, self.rid, self.cold))
        hub_ca = str(state / "tls" / "ca.crt")
        cmd = [sys.executable, "-m", "kubearc.cli", "hub", "--state-dir", str(state)]
        cmd += ["--port", str(self.hub_port), "--no-relay", "--log-level", "warning"]
        hub = self.spawn("hub", cmd)
        verify = ssl.create_default_context(cafile=hub_ca)
        self.wait(
            hub,
            lambda: httpx.get(f"{self.hub_url}/healthz", verify=verify, timeout=2).is_success,
            "hub /healthz",
        )
        log(f"hub pid {hub.proc.pid} on {self.hub_url}; registering and onboarding the cluster")
        onboarding, key = pki.new_key(), pki.new_key()
        with httpx.Client(base_url=self.hub_url, verify=verify, timeout=30) as c:
            body = {
                "location": "local",
                "properties": {
                    "agentPublicKeyCertificate": pki.public_key_der_b64(onboarding.public_key()),
                    "distribution": "generic",
                },
            }
            auth = {"Authorization": f"Bearer {minted.onboarder_token}"}
            c.put(self.rid, params={"api-version": "2024-01-01"}, json=body, headers=auth).raise_for_status()
            doc = c.post(
                "/agent/v1/identity/certificate",
                json={
                    "resourceId": self.rid,
                    "assertion": tokens.make_onboarding_assertion(onboarding, self.rid, self.hub_url),
                    "csr": pki.make_csr(key, "agent").decode(),
                },
            )
            doc.raise_for_status()
        issued = doc.json()
        pair = pki.KeyPair(key, pki.load_cert(issued["certificate"].encode()))
        identity = StoredIdentity(
            pair, pki.load_cert(issued["caCertificate"].encode()), dt.datetime.now(dt.UTC), self.rid
        )
        arun(FileStore(self.tmp / "identity").save(identity))  # what `kubearc agent identity` leaves
        self.tls = write_tls(self.tmp)
        args = [
            "--tls-cert", str(self.tmp / "tls.crt"), "--tls-key", str(self.tmp / "tls.key"),
            "--client-ca", str(self.tmp / "client-ca.crt"),
            "--port", str(self.guard_port), "--health-port", str(self.health_port),
            "--issuer", minted.issuer, "--audience", AUDIENCE, "--issuer-ca", hub_ca,
            "--cluster-resource-id", self.rid, "--checkaccess-url", self.hub_url, "--checkaccess-ca", hub_ca,
            "--identity", f"file:{self.tmp / 'identity'}", "--log-level", "info", "--log-format", "json",
        ]  # fmt: skip
        guard = self.spawn("guard", [sys.executable, "-m", "loadtest.bench_guard", "--role", "guard", *args])
        self.wait(
            guard,
            lambda: httpx.get(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2).status_code == 200,
            "guard /readyz",
        )
        log(f"guard pid {guard.proc.pid} ready on https://127.0.0.1:{self.guard_port} (mutual TLS)")

    def pid(self, name: str) -> int:
        return next(c.proc.pid for c in self.children if c.name == name)

    def log_of(self, name: str) -> Path:
        return next(c.log for c in self.children if c.name == name)

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.terminate()
        for child in reversed(self.children):
            try:
                child.proc.wait(15)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(5)


def role_guard(args: list[str]) -> int:
    """`kubearc guard serve ARGS` exactly, plus `POST /noop` on the review listener (the ceiling)."""
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    import guard.server as server
    from kubearc.cli import app

    original = server.build_apps

    async def noop(request: Request) -> Response:
        await request.body()  # the reviews read theirs too
        return Response(NOOP_ANSWER, media_type="application/json")

    def build_apps(state: Any) -> tuple[Any, Any]:
        reviews, health = original(state)
        reviews.app.router.routes.append(Route("/noop", noop, methods=["POST"]))  # inside RequestMetrics
        return reviews, health

    server.build_apps = build_apps
    try:
        app(["guard", "serve", *args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


# --------------------------------------------------------------------------- figures


def percentile(values: list[float], q: float) -> float:
    if not values:
        return NAN
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Row:
    label: str
    ok: int
    rate: float
    p50: float
    p99: float
    max: float
    errors: int
    load: float  # % of one core
    guard: float
    hub: float
    machine: float
    guard_ms: float  # guard CPU per ok request
    offered: float = NAN  # open loop: req/s scheduled
    lag99: float = NAN  # open loop: p99 ms the generator sent late
    sent99: float = NAN  # open loop: p99 ms from the actual send (without the generator's lateness)

    @classmethod
    def of(cls, label: str, o: Outcome) -> Row:
        lat = o.latencies

        def pct(seconds: float | None) -> float:
            return NAN if seconds is None or o.window <= 0 else 100 * seconds / o.window

        guard = o.watched.get("guard")
        return cls(
            label,
            o.ok,
            o.ok / o.window if o.window > 0 else NAN,
            percentile(lat, 0.5) * 1000,
            percentile(lat, 0.99) * 1000,
            (max(lat) if lat else NAN) * 1000,
            sum(o.errors.values()),
            pct(o.cpu),
            pct(guard),
            pct(o.watched.get("hub")),
            pct(o.watched.get("machine")),
            NAN if guard is None or not o.ok else guard * 1000 / o.ok,
            o.offered / o.window if o.offered and o.window > 0 else NAN,
            percentile(o.lags, 0.99) * 1000 if o.lags else NAN,
            percentile(o.served, 0.99) * 1000 if o.served else NAN,
        )

    def line(self) -> str:
        def num(value: float, width: int, digits: int) -> str:
            return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width}.{digits}f}"

        return (
            f"  {self.label:<38} {self.ok:>7} {num(self.rate, 7, 0)} {num(self.p50, 6, 2)}"
            f" {num(self.p99, 6, 2)} {num(self.max, 6, 1)} {self.errors:>4} |"
            f" {num(self.load, 4, 0)} {num(self.guard, 5, 0)}"
            f" {num(self.hub, 4, 0)} {num(self.machine, 4, 0)} | {num(self.guard_ms, 6, 3)}"
            f" | {num(self.offered, 5, 0)} {num(self.lag99, 5, 2)} {num(self.sent99, 6, 2)}"
        )


HEADER = (
    f"  {'':<38} {'':>7} {'':>7} {'latency':>6} {'':>6} {'':>6} {'':>4} | {'CPU % of one core':>21} |"
    f" {'guard':>6} | {'open loop':>18}\n"
    f"  {'endpoint':<38} {'ok':>7} {'req/s':>7} {'p50ms':>6} {'p99ms':>6} {'maxms':>6} {'err':>4} |"
    f" {'load':>4} {'guard':>5} {'hub':>4} {'all':>4} | {'ms/req':>6} |"
    f" {'offrd':>5} {'lag99':>5} {'sent99':>6}"
)


@dataclass
class Report:
    rows: dict[str, Row] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, key: str, label: str, o: Outcome) -> Row:
        row = Row.of(label, o)
        self.rows[key] = row
        for kind, n in o.errors.items():
            self.failures.append(f"{label}: {n} x {kind}: {o.samples.get(kind, '')[:200]}")
        return row


# --------------------------------------------------------------------------- the benchmark


@dataclass(frozen=True)
class Endpoint:
    key: str
    label: str
    path: str
    expect: bytes


ENDPOINTS = {
    "noop": Endpoint("noop", "no-op POST /noop (ceiling)", "/noop", NOOP_ANSWER),
    "tr_warm": Endpoint("tr_warm", "TokenReview, warm (cache hit)", "/tokenreviews", AUTHENTICATED),
    "sar_warm": Endpoint("sar_warm", "SubjectAccessReview, cached", "/subjectaccessreviews", ALLOWED),
    "tr_cold": Endpoint("tr_cold", "TokenReview, cold (verify each)", "/tokenreviews", AUTHENTICATED),
    "sar_cold": Endpoint("sar_cold", "SubjectAccessReview, uncached (hub)", "/subjectaccessreviews", ALLOWED),
}
CLOSED = ["noop", "tr_warm", "sar_warm", "tr_cold", "sar_cold"]
OPEN = ["noop", "tr_warm", "sar_warm"]


def count_uncached_token_reviews(guard_log: Path) -> int:
    """TokenReviews guard's audit log says were verified, not answered from its cache."""
    n = 0
    with guard_log.open(errors="replace") as f:
        for line in f:
            if '"msg":"tokenreview"' not in line:
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                n += record.get("cached") is False and record.get("authenticated") is True
    return n


def run(args: argparse.Namespace, stack: Stack, gen: LoadGen) -> Report:
    report = Report()
    minted = stack.minted
    assert minted is not None
    watch = {"guard": [stack.pid("guard")], "hub": [stack.pid("hub")]}
    warm = {
        "noop": [token_review(minted.warm_token)],
        "tr_warm": [token_review(minted.warm_token)],
        "sar_warm": [access_review(minted.warm_oid, [minted.group])],
    }
    cold_bodies = [token_review(t) for t in minted.cold_tokens]
    per_round = len(cold_bodies) // args.rounds
    seeds = iter(range(1, 1_000_000))

    def phase(key: str, **kw: Any) -> Phase:
        e = ENDPOINTS[key]
        return Phase(
            e.label, stack.guard_port, stack.tls, e.path, e.expect, args.connections, watch=watch, **kw
        )

    # One unmeasured pass warms every cache the steady phases rely on (keys, token, decision).
    gen.run(phase("sar_warm", bodies=warm["sar_warm"], duration=0.5))
    gen.run(phase("tr_warm", bodies=warm["tr_warm"], duration=0.5))
    results: dict[str, list[Outcome]] = {k: [] for k in CLOSED}
    for r in range(args.rounds):
        order = CLOSED[r % len(CLOSED) :] + CLOSED[: r % len(CLOSED)]
        for key in order:
            log(f"round {r + 1}/{args.rounds}: {ENDPOINTS[key].label}, closed loop, {args.seconds:g} s")
            if key == "tr_cold":
                p = phase(key, bodies=cold_bodies[r * per_round : (r + 1) * per_round], once=True)
            elif key == "sar_cold":
                p = phase(key, fresh_sar_groups=[minted.group], seed=next(seeds))
            else:
                p = phase(key, bodies=warm[key])
            o = gen.run(replace(p, duration=args.seconds))
            if o.exhausted:
                report.notes.append(
                    f"round {r + 1}: the cold tokens ran out before the slice ended (window cut)"
                )
            results[key].append(o)
    for key in CLOSED:
        report.add(key, ENDPOINTS[key].label, merge_serial(results[key]))
    verified = count_uncached_token_reviews(stack.log_of("guard"))
    cold_ok = sum(o.ok for o in results["tr_cold"])
    report.notes.append(
        f"cold TokenReviews: {cold_ok} answered in the windows; guard's audit log shows {verified} verified "
        f"(uncached) TokenReviews in all (warm-ups included), {len(cold_bodies)} distinct tokens were minted"
    )
    if verified < cold_ok:
        report.failures.append(f"only {verified} verified TokenReviews for {cold_ok} cold requests")

    opened: dict[str, list[Outcome]] = {k: [] for k in OPEN}
    for r in range(args.rounds):
        order = OPEN[r % len(OPEN) :] + OPEN[: r % len(OPEN)]
        for key in order:
            log(f"round {r + 1}/{args.rounds}: {ENDPOINTS[key].label}, {args.rate:g} req/s offered")
            p = phase(key, bodies=warm[key], rate=args.rate, duration=args.latency_seconds)
            opened[key].append(gen.run(p, args.open_procs))
    for key in OPEN:
        report.add(f"{key}@rate", f"{ENDPOINTS[key].label} @{args.rate:g}/s", merge_serial(opened[key]))
    return report


def print_report(report: Report, args: argparse.Namespace) -> None:
    print()
    print(
        f"== guard: {args.connections} keep-alive mTLS connections, {args.procs} load-generator processes, "
        f"{args.rounds} rounds x {args.seconds:g} s closed loop, "
        f"{args.rounds} x {args.latency_seconds:g} s at {args.rate:g} req/s "
        f"from {args.open_procs} process(es) =="
    )
    print(HEADER)
    for key, row in report.rows.items():
        if key == "noop@rate":
            print(f"  -- open loop: {args.rate:g} req/s offered, latency from the intended send time --")
        print(row.line())
    rows = report.rows
    noop = rows.get("noop")
    if noop and noop.rate > 0:
        for key in ("tr_warm", "sar_warm", "tr_cold", "sar_cold"):
            if key in rows:
                verdict = ""
                if key in ("tr_warm", "sar_warm"):
                    verdict = "  (target >= 0.60: " + (
                        "met)" if rows[key].rate / noop.rate >= 0.6 else "MISSED)"
                    )
                cost = noop.guard_ms / rows[key].guard_ms if rows[key].guard_ms > 0 else NAN
                print(
                    f"  {ENDPOINTS[key].label} / no-op: {rows[key].rate / noop.rate:.2f}x throughput, "
                    f"{cost:.2f}x by guard CPU per request{verdict}"
                )
    for key in ("tr_warm@rate", "sar_warm@rate"):
        if key in rows:
            p99 = rows[key].p99
            noop_rate = rows["noop@rate"]
            print(
                f"  {rows[key].label}: p99 {p99:.2f} ms from the intended send, {rows[key].sent99:.2f} ms "
                f"from the actual send (no-op {noop_rate.p99:.2f} / {noop_rate.sent99:.2f} ms; "
                f"target < 5 ms: {'met' if p99 < 5 else 'MISSED'})"
            )
    for note in report.notes:
        print(f"  {note}")
    print(f"  result: {'OK' if not report.failures else 'FAILED'}")
    for failure in report.failures:
        print(f"    ! {failure}")


def serve(stack: Stack) -> None:
    """Keep the stack up for locust or py-spy; print what to export (tokens go to a 0600 file)."""
    minted = stack.minted
    assert minted is not None
    tokens = stack.tmp / "tokens.txt"
    fd = os.open(tokens, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join([minted.warm_token, *minted.cold_tokens[:1000]]) + "\n")
    print(f"export GUARD_URL=https://127.0.0.1:{stack.guard_port}")
    print(f"export GUARD_CA={stack.tls['ca']} GUARD_CERT={stack.tls['cert']} GUARD_KEY={stack.tls['key']}")
    print(f"export GUARD_TOKENS={tokens}  # one user token per line; the first is reused for warm reviews")
    print(
        f"# guard pid {stack.pid('guard')} (py-spy record -p PID), hub pid {stack.pid('hub')}; Ctrl-C stops"
    )
    sys.stdout.flush()

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `kill PID` stops the stack as Ctrl-C does
    signal.signal(signal.SIGINT, interrupt)  # also when started in the background (SIGINT ignored)
    with contextlib.suppress(KeyboardInterrupt):
        while all(c.proc.poll() is None for c in stack.children):
            time.sleep(1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = Parser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per closed-loop slice")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds over the endpoints")
    ap.add_argument("--connections", type=int, default=32, help="keep-alive mTLS connections in all")
    ap.add_argument("--procs", type=int, default=2, help="load-generator processes")
    ap.add_argument("--rate", type=float, default=1000.0, help="offered req/s of the open-loop latency test")
    ap.add_argument(
        "--open-procs",
        type=int,
        default=1,
        help="load-generator processes of the open-loop test (one keeps up with 1,000/s; see README)",
    )
    ap.add_argument("--latency-seconds", type=float, default=3.0, help="measured seconds per open-loop slice")
    ap.add_argument(
        "--cold-tokens", type=int, default=12000, help="distinct tokens for the cold TokenReviews"
    )
    ap.add_argument("--serve", action="store_true", help="bring the stack up for locust/py-spy; no measuring")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory (process logs)")
    args = ap.parse_args(argv)
    if (
        min(args.rounds, args.connections, args.procs, args.open_procs) < 1
        or min(args.seconds, args.rate) <= 0
    ):
        ap.error("--rounds, --connections and --procs must be >= 1; --seconds and --rate > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--role", "guard"]:  # the benchmark's guard process: `kubearc guard serve` args follow
        return role_guard(argv[2:])
    args = parse_args(argv)
    log(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, client loop {_loop_factory().__module__}")
    tmp = Path(tempfile.mkdtemp(prefix="kubearc-bench-guard-"))
    stack = Stack(tmp, 1000 if args.serve else args.cold_tokens)
    gen: LoadGen | None = None
    failed = True
    try:
        stack.start()
        if args.serve:
            serve(stack)
            return 0
        gen = LoadGen(args.procs)
        report = run(args, stack, gen)
        print_report(report, args)
        failed = bool(report.failures)
    except Exception as exc:
        log(f"aborted: {exc}")
        for child in stack.children:
            print(f"--- {child.name} log tail:\n{child.tail()}", file=sys.stderr)
    finally:
        if gen is not None:
            gen.close()
        stack.stop()
        if args.keep:
            log(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
