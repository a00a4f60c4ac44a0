"""Heartbeat benchmark: N clusters registered, onboarded and heartbeating against a real hub process.

Why: DESIGN.md section 5 sizes heartbeats for 100,000 clusters on one hub replica, and
"speed is measured, not hoped". This drives the hub's real HTTPS API (a separate
`kubearc hub` process, SQLite and/or PostgreSQL) and prints sustained heartbeats/s and
latency next to a baseline measured in the same run: `GET /healthz` of the same hub
process, same client, same concurrency, same Authorization headers. The ratio between
the two is the cost of the heartbeat itself (agent authentication, one UPDATE, commit).

Run: `.venv/bin/python -m loadtest.bench_hub [--backends sqlite,postgres] [--clusters 10000]
[--duration 30] [--concurrency 64] [--procs 2] [--replicas 2] [--seed store] [--rates 333,2000]`.
At fleet scale: `--backends postgres --clusters 100000 --replicas 2` (seeded through the store).
See loadtest/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import multiprocessing as mp
import os
import random
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx

from loadtest import Parser
from loadtest.haproxy import haproxy
from loadtest.procstat import cpu_seconds, free_port, machine_busy_seconds

try:
    import sniffio  # noqa: F401
except ImportError:
    # httpcore tries `import sniffio` on every request; without it installed, each try walks
    # sys.path (~0.25 ms of client CPU per request). A None entry makes the failure immediate.
    sys.modules["sniffio"] = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[1]
SUB = "00000000-0000-0000-0000-00000000be01"
RG = "bench"
ONBOARDING_ROLE = "Kubernetes Cluster - Azure Arc Onboarding"
API = "?api-version=2024-01-01"
HEARTBEAT = "/agent/v1/heartbeat"
HEALTHZ = "/healthz"
ONBOARD = "/agent/v1/identity/certificate"
PG_ADMIN = os.environ.get("KUBEARC_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SLICE_WARMUP = 1.0  # seconds per measured slice before counting: new keep-alive connections settle
VERIFY_SAMPLE = 100
ONBOARD_CHUNK = 2500  # onboarding assertions are made per chunk: they expire 5 minutes after
# Agent tokens live AGENT_TOKEN_TTL (300 s); re-mint when a slice would end closer than this to expiry.
TOKEN_MARGIN = 30.0
NAN = float("nan")
T = TypeVar("T")


# --------------------------------------------------------------------------- load generator
# Everything in this section runs in load-generator processes too (spawned), so it imports
# nothing from the hub.


@dataclass(frozen=True)
class Req:
    method: str
    path: str
    token: str | None = None
    body: dict[str, Any] | None = None


@dataclass
class Phase:
    """One load pattern: each request once (registration, onboarding) or cycled for a duration."""

    url: str
    ca: str
    reqs: list[Req]
    concurrency: int
    loop: bool = False
    warmup: float = 0.0
    duration: float = 0.0
    timeout: float = 900.0  # once mode: stop issuing after this many seconds
    pick: str | None = None  # dotted JSON field of each response to return (once mode)
    start_at: float = 0.0  # wall-clock start, aligns several load-generator processes
    offset: int = 0  # index of reqs[0] in the whole phase
    watch: dict[str, list[int]] = field(default_factory=dict)  # pids whose CPU to sample
    rate: float = 0.0  # loop mode: offered requests/s (open loop; latency from each scheduled time)
    fresh_connections: bool = False  # with `rate`: each request on a new TLS connection, as a 5-minute agent


@dataclass
class Outcome:
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)  # first message per error kind
    latencies: list[float] = field(default_factory=list)  # seconds, requests done in the window
    window: float = 0.0  # seconds measured
    cpu: float = 0.0  # load-generator CPU seconds in the window
    watched: dict[str, float] = field(default_factory=dict)  # CPU seconds of watched pids in the window
    picked: dict[int, Any] = field(default_factory=dict)


def _dig(value: Any, path: str) -> Any:
    if path == ".":
        return value
    for key in path.split("."):
        value = value[key]
    return value


async def _send(client: httpx.AsyncClient, url: httpx.URL, req: Req, pick: str | None) -> tuple[str, Any]:
    headers = {"Authorization": f"Bearer {req.token}"} if req.token else None
    try:
        r = await client.request(req.method, url, headers=headers, json=req.body)
    except httpx.HTTPError as exc:
        return type(exc).__name__, str(exc)[:300]
    if r.status_code >= 300:
        return f"HTTP {r.status_code}", r.text[:300]
    return "ok", _dig(r.json(), pick) if pick else None


async def _drive(p: Phase) -> Outcome:
    out = Outcome()
    # One client with one keep-alive connection per worker: httpcore's pool rescans every
    # connection on each request (encode/httpcore#1035), which at 64 connections in one pool
    # cost more CPU than the requests themselves.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    ctx = ssl.create_default_context(cafile=p.ca)
    n = len(p.reqs)
    urls = {r.path: httpx.URL(p.url + r.path) for r in p.reqs}  # parsed once, not per request
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=p.url, verify=ctx, limits=limits, timeout=120)
            )
            for _ in range(p.concurrency)
        ]
        if p.loop and not p.fresh_connections:  # connected before the clock starts: no handshake is timed
            await asyncio.gather(*(client.get(HEALTHZ) for client in clients))
        await asyncio.sleep(max(0.0, p.start_at - time.time()))
        start = time.perf_counter()
        measure_from = start + p.warmup
        stop = measure_from + p.duration if p.loop else start + p.timeout
        # Bounded in count as well as in time: no loop here can run away.
        cap = int((p.warmup + p.duration) * 100_000) if p.loop else n
        issued = 0
        marks: dict[str, tuple[float, float, dict[str, float]]] = {}

        def mark(name: str) -> None:
            marks[name] = (
                time.perf_counter(),
                time.process_time(),
                {"machine": machine_busy_seconds(), **{k: cpu_seconds(v) for k, v in p.watch.items()}},
            )

        async def watcher() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            mark("from")
            await asyncio.sleep(max(0.0, stop - time.perf_counter()))
            mark("to")

        async def paced() -> None:
            """Open loop: request k is due at start + k/rate and waits for a free connection,
            so a slow hub shows as latency (from the due time), not as fewer requests."""
            free: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
            for client in clients:
                free.put_nowait(client)

            async def one(k: int, due: float) -> None:
                req = p.reqs[k % n]
                if p.fresh_connections:  # a new connection (TLS handshake) for this request alone
                    async with httpx.AsyncClient(
                        base_url=p.url, verify=ctx, limits=limits, timeout=120
                    ) as new:
                        kind, value = await _send(new, urls[req.path], req, None)
                else:
                    client = await free.get()
                    try:
                        kind, value = await _send(client, urls[req.path], req, None)
                    finally:
                        free.put_nowait(client)
                t1 = time.perf_counter()
                if kind != "ok":
                    out.errors[kind] += 1
                    out.samples.setdefault(kind, str(value))
                elif measure_from <= due <= stop:
                    out.ok += 1
                    out.latencies.append(t1 - due)

            async with asyncio.TaskGroup() as group:
                k = 0
                while (due := start + k / p.rate) < stop:
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    group.create_task(one(k, due))
                    k += 1

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal issued
            while issued < cap and time.perf_counter() < stop:
                i = issued % n
                issued += 1
                t0 = time.perf_counter()
                req = p.reqs[i]
                kind, value = await _send(client, urls[req.path], req, p.pick)
                t1 = time.perf_counter()
                if kind != "ok":
                    out.errors[kind] += 1
                    out.samples.setdefault(kind, str(value))
                elif not p.loop or measure_from <= t1 <= stop:
                    out.ok += 1
                    out.latencies.append(t1 - t0)
                    if p.pick:
                        out.picked[p.offset + i] = value

        if p.loop:
            timer = asyncio.create_task(watcher())
            if p.rate > 0:
                await paced()
            else:
                await asyncio.gather(*(worker(c) for c in clients))
            await timer
        else:
            mark("from")
            await asyncio.gather(*(worker(c) for c in clients))
            mark("to")
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
    """Drive one phase on a fresh event loop (uvloop when installed, as the hub's uvicorn uses)."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_drive(phase))


def _ready(_: int) -> int:
    return os.getpid()


def merge_parallel(parts: list[Outcome]) -> Outcome:
    """Outcomes of load-generator processes that ran side by side over the same window."""
    out = Outcome()
    for part in parts:
        out.ok += part.ok
        out.errors.update(part.errors)
        for kind, message in part.samples.items():
            out.samples.setdefault(kind, message)
        out.latencies.extend(part.latencies)
        out.cpu += part.cpu
        out.picked.update(part.picked)
        out.window = max(out.window, part.window)
        for name, seconds in part.watched.items():
            out.watched[name] = max(out.watched.get(name, 0.0), seconds)  # all sampled the same pids
    return out


def merge_serial(parts: list[Outcome]) -> Outcome:
    """Outcomes of slices that ran one after another."""
    out = merge_parallel(parts)
    out.window = sum(p.window for p in parts)
    out.watched = {k: sum(p.watched.get(k, 0.0) for p in parts) for k in parts[0].watched} if parts else {}
    return out


class LoadGen:
    """Runs phases in this process, or split over `procs` spawned processes started at one instant."""

    def __init__(self, procs: int) -> None:
        self.procs = procs
        self.pool: ProcessPoolExecutor | None = None
        if procs > 1:
            self.pool = ProcessPoolExecutor(procs, mp_context=mp.get_context("spawn"))
            list(self.pool.map(_ready, range(procs)))  # spawn and import before anything is timed

    def run(self, phase: Phase) -> Outcome:
        if self.pool is None:
            return run_phase(phase)
        k = self.procs
        parts: list[Phase] = []
        size = math.ceil(len(phase.reqs) / k)
        for j in range(k):
            reqs = phase.reqs[j * size : (j + 1) * size]
            conc = phase.concurrency // k + (1 if j < phase.concurrency % k else 0)
            if reqs and conc:
                share = replace(phase, reqs=reqs, concurrency=conc, offset=j * size, rate=phase.rate / k)
                parts.append(share)
        start_at = time.time() + 0.3
        parts = [replace(p, start_at=start_at) for p in parts]
        return merge_parallel(list(self.pool.map(run_phase, parts)))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


# --------------------------------------------------------------------------- figures


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


@dataclass
class Row:
    label: str
    count: int
    rate: float
    p50: float  # ms
    p99: float
    max: float
    errors: int
    client: float  # CPU, % of one core, over the measured window
    hub: float
    db: float
    machine: float  # every process on the machine, other users' included
    hub_ms: float  # hub CPU per successful request: the hub's cost, whoever saturates

    @classmethod
    def of(cls, label: str, o: Outcome) -> Row:
        lat = sorted(o.latencies)
        ms = 1000.0

        def pct(seconds: float | None) -> float:
            return NAN if seconds is None or o.window <= 0 else 100 * seconds / o.window

        hub = o.watched.get("hub")
        return cls(
            label,
            o.ok,
            o.ok / o.window if o.window > 0 else NAN,
            percentile(lat, 0.5) * ms,
            percentile(lat, 0.99) * ms,
            (lat[-1] if lat else NAN) * ms,
            sum(o.errors.values()),
            pct(o.cpu),
            pct(hub),
            pct(o.watched.get("postgres")),
            pct(o.watched.get("machine")),
            NAN if hub is None or not o.ok else hub * ms / o.ok,
        )

    def line(self) -> str:
        def num(value: float, width: int, digits: int) -> str:
            return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width}.{digits}f}"

        return (
            f"  {self.label:<34} {self.count:>6} {num(self.rate, 7, 1)} {num(self.p50, 7, 1)}"
            f" {num(self.p99, 7, 1)} {num(self.max, 7, 0)} {self.errors:>4} |"
            f" {num(self.client, 4, 0)} {num(self.hub, 4, 0)} {num(self.db, 4, 0)}"
            f" {num(self.machine, 4, 0)} | {num(self.hub_ms, 6, 2)}"
        )


HEADER = (
    f"  {'':<34} {'':>6} {'':>7} {'latency':>7} {'':>7} {'':>7} {'':>4} |"
    f" {'CPU % of one core':>19} | {'hub CPU':>6}\n"
    f"  {'phase':<34} {'ok':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'err':>4} |"
    f" {'load':>4} {'hub':>4} {'pg':>4} {'all':>4} | {'ms/req':>6}"
)


@dataclass
class Report:
    backend: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    heartbeat: Row | None = None
    baseline: Row | None = None
    failures: list[str] = field(default_factory=list)

    def add(self, label: str, o: Outcome) -> Row:
        row = Row.of(label, o)
        self.rows.append(row)
        for kind, n in o.errors.items():
            self.failures.append(f"{label}: {n} x {kind}: {o.samples.get(kind, '')[:200]}")
        return row


# --------------------------------------------------------------------------- hub process and store


def postgres_pids() -> list[int]:
    """Every PostgreSQL server process on this machine (the server is shared with the bench database)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def arun(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@contextmanager
def database(backend: str) -> Iterator[str | None]:
    """None for SQLite in the state dir; for PostgreSQL a fresh database, dropped afterwards."""
    if backend == "sqlite":
        yield None
        return
    import asyncpg

    name = f"kubearc_bench_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    arun(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        arun(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def bootstrap(
    state_dir: Path, port: int, database_url: str | None, public_url: str | None = None
) -> str:
    """Open the hub's store before the hub runs: keys, tenant, TLS, one onboarding user; its token.

    The hub process then loads the same keys (state dir + database), so the token verifies there.
    """
    from hub.config import HubConfig
    from hub.context import open_hub
    from hub.issuer.tokens import issue_access_token
    from hub.rbac.assignments import create_assignment
    from hub.server import ensure_tls

    config = HubConfig(state_dir=state_dir, port=port, database_url=database_url, public_url=public_url)
    hub = await open_hub(config)
    try:
        await ensure_tls(config, hub)
        oid = str(uuid.uuid4())
        async with hub.sessions() as session:
            await create_assignment(session, f"/subscriptions/{SUB}", ONBOARDING_ROLE, oid, "User")
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


SEED_CHUNK = 5000
ENCRYPTION_KEY = "KUBEARC_HUB_ENCRYPTION_KEY"


async def seed_store(
    state_dir: Path, port: int, database_url: str | None, public_url: str | None, names: list[str]
) -> list[Any]:
    """Register and onboard `names` in bulk through the hub's store (not its API): the same rows
    and the same identity certificates (`hub.identity.issue_certificate`) onboarding makes, in
    chunks of multi-row INSERTs, so 100,000 clusters take minutes, not hours. Returns each
    cluster's identity (key and certificate), as its agent would hold it."""
    from sqlalchemy import insert

    from foundation import pki
    from hub.config import HubConfig
    from hub.context import open_hub
    from hub.identity import issue_certificate
    from hub.resources import cluster_id, scope_key
    from hub.store.models import Cluster, IdentityCertificate

    config = HubConfig(state_dir=state_dir, port=port, database_url=database_url, public_url=public_url)
    hub = await open_hub(config)
    identities: list[Any] = []
    onboarding = pki.public_key_der_b64(pki.new_key().public_key())
    try:
        for lo in range(0, len(names), SEED_CHUNK):
            chunk = names[lo : lo + SEED_CHUNK]
            now = hub.now()
            keys = [pki.new_key() for _ in chunk]
            keyed = [scope_key(cluster_id(SUB, RG, name)) for name in chunk]
            certs = [
                issue_certificate(hub, n, k, key.public_key())
                for n, k, key in zip(chunk, keyed, keys, strict=True)
            ]
            rows = [
                {
                    "resource_key": key,
                    "subscription_id": SUB,
                    "resource_group": RG,
                    "name": name,
                    "location": "local",
                    "tags": {},
                    "agent_public_key": onboarding,
                    "distribution": "k3s",
                    "infrastructure": "bench",
                    "created_at": now,
                    "created_by": "kubearc-bench",
                    "auto_upgrade": True,
                    "provisioning_state": "Succeeded",
                    "identity_expires_at": cert.not_valid_after_utc,
                }
                for name, key, cert in zip(chunk, keyed, certs, strict=True)
            ]
            async with hub.engine.begin() as conn:
                made = await conn.execute(insert(Cluster).returning(Cluster.id, Cluster.resource_key), rows)
                ids = dict((key, cid) for cid, key in made.all())
                await conn.execute(
                    insert(IdentityCertificate),
                    [
                        {
                            "serial": format(cert.serial_number, "x"),
                            "cluster_id": ids[key],
                            "not_before": cert.not_valid_before_utc,
                            "not_after": cert.not_valid_after_utc,
                        }
                        for key, cert in zip(keyed, certs, strict=True)
                    ],
                )
            identities += [pki.KeyPair(key, cert) for key, cert in zip(keys, certs, strict=True)]
            log(f"seeded {lo + len(chunk)}/{len(names)} clusters through the store")
    finally:
        await hub.close()
    return identities


class HubProcess:
    """`python -m kubearc.cli hub` as a child process, the way an operator runs it."""

    def __init__(
        self, state_dir: Path, port: int, database_url: str | None, log: Path, public_url: str | None = None
    ) -> None:
        self.state_dir, self.port, self.database_url, self.log = state_dir, port, database_url, log
        self.public_url = public_url
        self.url = f"https://localhost:{port}"  # this replica itself (health checks)
        self.ca = str(state_dir / "tls" / "ca.crt")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> None:
        cmd = [sys.executable, "-m", "kubearc.cli", "hub", "--state-dir", str(self.state_dir)]
        cmd += ["--port", str(self.port), "--log-level", "warning", "--no-relay"]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        if self.public_url:
            cmd += ["--public-url", self.public_url]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEARC_")}
        if ENCRYPTION_KEY in os.environ:  # replicas share the data key (README: hub replicas)
            env[ENCRYPTION_KEY] = os.environ[ENCRYPTION_KEY]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.tail()}")
            if not Path(self.ca).exists():  # a new replica writes its state directory first
                time.sleep(0.2)
                continue
            ctx = ssl.create_default_context(cafile=self.ca)
            try:
                if httpx.get(self.url + HEALTHZ, verify=ctx, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"hub did not answer /healthz within {timeout:.0f} s:\n{self.tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# --------------------------------------------------------------------------- the benchmark


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench:
    """One backend: register, onboard, first heartbeats, interleaved heartbeat/no-op slices, verify."""

    def __init__(
        self,
        args: argparse.Namespace,
        gen: LoadGen,
        hubs: list[HubProcess],
        url: str,
        user_token: str,
        identities: list[Any] | None = None,
    ) -> None:
        self.args, self.gen, self.hubs, self.url, self.user_token = args, gen, hubs, url, user_token
        self.ca = hubs[0].ca  # every replica's certificate comes from the one serving CA
        self.n: int = args.clusters
        self.conc: int = args.concurrency
        self.names = cluster_names(self.n)
        self.rids = [
            f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Kubernetes/connectedClusters/{name}"
            for name in self.names
        ]
        self.tokens: list[str] = []
        self.minted_at = 0.0
        self.identities: list[Any] = identities or []  # seeded through the store: no API onboarding

    def phase(self, reqs: list[Req], **kw: Any) -> Phase:
        return Phase(url=self.url, ca=self.ca, reqs=reqs, concurrency=self.conc, **kw)

    def watch(self, backend: str) -> dict[str, list[int]]:
        pids = {"hub": [hub.pid for hub in self.hubs]}
        if backend == "postgres":
            pids["postgres"] = postgres_pids()
        return pids

    def run(self, report: Report) -> None:
        if not self.identities:
            self.onboard_through_the_api(report)
        else:
            report.notes.append(f"{self.n} clusters and certificates seeded through the store (not timed)")
        self.mint()
        o = self.gen.run(self.phase(self.beats(HEARTBEAT), watch=self.watch(report.backend)))
        report.add("heartbeat, first (token verify)", o)
        self.require(o, self.n, "first heartbeats")

        self.steady(report)
        self.paced(report)
        self.verify(report)

    def onboard_through_the_api(self, report: Report) -> None:
        from foundation import pki, tokens

        n = self.n
        t = time.perf_counter()
        keys = [pki.new_key() for _ in range(n)]
        bodies = [
            {
                "location": "local",
                "properties": {
                    "agentPublicKeyCertificate": pki.public_key_der_b64(k.public_key()),
                    "distribution": "k3s",
                    "infrastructure": "bench",
                },
            }
            for k in keys
        ]
        log(f"{n} onboarding keys made in {time.perf_counter() - t:.1f} s; registering")
        puts = [
            Req("PUT", rid + API, self.user_token, body) for rid, body in zip(self.rids, bodies, strict=True)
        ]
        o = self.gen.run(self.phase(puts, watch=self.watch(report.backend)))
        report.add("register (PUT connectedCluster)", o)
        self.require(o, n, "registration")

        log("making identity keys and CSRs")
        t = time.perf_counter()
        id_keys = [pki.new_key() for _ in range(n)]
        csrs = [pki.make_csr(k, "agent").decode() for k in id_keys]
        log(f"made in {time.perf_counter() - t:.1f} s; onboarding")
        # Assertions live 5 minutes: make them per chunk, just before it is sent (not timed).
        parts = []
        for lo in range(0, n, ONBOARD_CHUNK):
            hi = min(n, lo + ONBOARD_CHUNK)
            onboards = [
                Req(
                    "POST",
                    ONBOARD,
                    None,
                    {
                        "resourceId": self.rids[i],
                        "assertion": tokens.make_onboarding_assertion(keys[i], self.rids[i], self.url),
                        "csr": csrs[i],
                    },
                )
                for i in range(lo, hi)
            ]
            part = self.gen.run(self.phase(onboards, pick="certificate", watch=self.watch(report.backend)))
            part.picked = {lo + i: v for i, v in part.picked.items()}
            parts.append(part)
        o = merge_serial(parts)
        report.add("onboard (assertion+CSR -> cert)", o)
        self.require(o, n, "onboarding")
        self.identities = [pki.KeyPair(k, pki.load_cert(o.picked[i].encode())) for i, k in enumerate(id_keys)]

    def require(self, o: Outcome, n: int, what: str) -> None:
        if o.ok != n:
            raise RuntimeError(f"{what}: {o.ok}/{n} succeeded; errors {dict(o.errors)}: {o.samples}")

    def mint(self) -> None:
        from foundation import tokens

        t = time.perf_counter()
        self.tokens = [tokens.make_agent_token(pair, self.url) for pair in self.identities]
        self.minted_at = time.time()
        log(f"{len(self.tokens)} agent tokens minted in {time.perf_counter() - t:.1f} s")

    def beats(self, path: str) -> list[Req]:
        """Each cluster's request with its agent token, in round-robin order (healthz ignores the token)."""
        if path == HEARTBEAT:
            return [Req("POST", HEARTBEAT, tok, {}) for tok in self.tokens]
        return [Req("GET", HEALTHZ, tok) for tok in self.tokens]

    def steady(self, report: Report) -> None:
        """Heartbeats and the no-op baseline in alternating slices, so machine noise hits both alike."""
        from foundation import tokens

        rounds, each = self.args.rounds, self.args.duration / self.args.rounds
        results: dict[str, list[Outcome]] = {HEARTBEAT: [], HEALTHZ: []}
        for r in range(rounds):
            order = [HEALTHZ, HEARTBEAT] if r % 2 == 0 else [HEARTBEAT, HEALTHZ]
            for path in order:
                if time.time() - self.minted_at + SLICE_WARMUP + each + TOKEN_MARGIN > tokens.AGENT_TOKEN_TTL:
                    self.mint()  # as real agents do before expiry; re-verify every token outside the window
                    o = self.gen.run(self.phase(self.beats(HEARTBEAT)))
                    self.require(o, self.n, "heartbeats after token refresh")
                    report.notes.append(
                        f"tokens re-minted before round {r + 1} (one unmeasured verify round)"
                    )
                log(f"round {r + 1}/{rounds}: {path} for {each:.1f} s")
                results[path].append(
                    self.gen.run(
                        self.phase(
                            self.beats(path),
                            loop=True,
                            warmup=SLICE_WARMUP,
                            duration=each,
                            watch=self.watch(report.backend),
                        )
                    )
                )
        hb, base = merge_serial(results[HEARTBEAT]), merge_serial(results[HEALTHZ])
        report.heartbeat = report.add("heartbeat, steady state", hb)
        report.baseline = report.add("no-op GET /healthz (baseline)", base)

    def paced(self, report: Report) -> None:
        """Heartbeats at the offered rates (open loop): the fleet's steady 333/s and a burst after a
        relay restart; p50/p99 from each heartbeat's due time. Each rate also paces the no-op
        baseline: at a low rate most of a request's CPU is the kernel's and the event loop's
        (one wake-up, one TLS record, one send per request), the heartbeat's share is the gap."""
        from foundation import tokens

        for rate in self.args.rates:
            if (
                time.time() - self.minted_at + SLICE_WARMUP + self.args.rate_seconds + TOKEN_MARGIN
                > tokens.AGENT_TOKEN_TTL
            ):
                self.mint()
                o = self.gen.run(self.phase(self.beats(HEARTBEAT)))
                self.require(o, self.n, "heartbeats after token refresh")
            for path in (HEARTBEAT, HEALTHZ):  # the stack's own cost at this rate: the no-op, paced alike
                log(f"{path} offered at {rate:g}/s for {self.args.rate_seconds:g} s")
                offered = self.phase(
                    self.beats(path),
                    loop=True,
                    warmup=SLICE_WARMUP,
                    duration=self.args.rate_seconds,
                    watch=self.watch(report.backend),
                    rate=rate,
                )
                o = self.gen.run(replace(offered, concurrency=max(self.conc, 256)))  # room for a backlog
                what = "heartbeat" if path == HEARTBEAT else "no-op /healthz"
                report.add(f"{what} at {rate:g}/s offered", o)
        if self.args.fleet_rate > 0:
            self.like_a_fleet(report, self.args.fleet_rate)

    def like_a_fleet(self, report: Report, rate: float) -> None:
        """Heartbeats as agents that beat every 5 minutes send them: each on a new TLS connection
        (the last one idled out long ago) with a token the hub has not seen (agent tokens live
        5 minutes), so every one pays a handshake and a token signature check."""
        from foundation import tokens

        count = int(rate * (SLICE_WARMUP + self.args.rate_seconds)) + 1
        start = random.Random(11).randrange(self.n)
        log(f"minting {count} fresh tokens for the fleet-like phase")
        fresh = [
            Req(
                "POST",
                HEARTBEAT,
                tokens.make_agent_token(self.identities[(start + i) % self.n], self.url),
                {},
            )
            for i in range(count)
        ]
        log(f"heartbeats offered at {rate:g}/s, each on a new connection with a fresh token")
        o = self.gen.run(
            self.phase(
                fresh,
                loop=True,
                warmup=SLICE_WARMUP,
                duration=self.args.rate_seconds,
                watch=self.watch(report.backend),
                rate=rate,
                fresh_connections=True,
            )
        )
        report.add(f"{rate:g}/s, new conn + fresh token", o)

    def verify(self, report: Report) -> None:
        sample = random.Random(7).sample(range(self.n), min(VERIFY_SAMPLE, self.n))
        gets = [Req("GET", self.rids[i] + API, self.user_token) for i in sample]
        o = run_phase(self.phase(gets, pick="properties.connectivityStatus"))
        statuses = Counter(o.picked.values())
        report.add(f"verify: GET {len(sample)} sampled clusters", o)
        if statuses.get("Connected", 0) != len(sample):
            report.failures.append(f"sampled clusters not all Connected: {dict(statuses)}")
        listed, o = self.list_all()
        report.add(f"verify: list all ({o.ok} pages)", o)
        connected = sum(1 for v in listed if v["properties"]["connectivityStatus"] == "Connected")
        report.notes.append(
            f"verify: {statuses.get('Connected', 0)}/{len(sample)} sampled GETs Connected; "
            f"list returned {len(listed)} clusters ({connected} Connected), expected {self.n}"
        )
        if len(listed) != self.n or connected != self.n:
            report.failures.append(
                f"list returned {len(listed)} clusters, {connected} Connected; expected {self.n}"
            )

    def list_all(self) -> tuple[list[dict[str, Any]], Outcome]:
        """Every cluster, page after page (1,000 a page, nextLink's $skipToken), as one outcome."""
        path = f"/subscriptions/{SUB}/providers/Microsoft.Kubernetes/connectedClusters{API}"
        listed: list[dict[str, Any]] = []
        parts: list[Outcome] = []
        token: str | None = None
        while True:
            page_path = path + (f"&$skipToken={token}" if token else "")
            o = run_phase(
                replace(self.phase([Req("GET", page_path, self.user_token)], pick="."), concurrency=1)
            )
            parts.append(o)
            page = o.picked.get(0) or {}
            listed += page.get("value", [])
            if "nextLink" not in page or o.errors:
                return listed, merge_serial(parts)
            token = parse_qs(urlsplit(page["nextLink"]).query)["$skipToken"][0]


def cluster_names(n: int) -> list[str]:
    return [f"bench-{i:06d}" for i in range(n)]


def bench_backend(backend: str, args: argparse.Namespace, gen: LoadGen) -> Report:
    """One backend: the store bootstrapped (and seeded), the hub replicas started (behind HAProxy
    when there are several: SQLite takes one), the benchmark run, everything torn down."""
    report = Report(backend)
    replicas = args.replicas if backend == "postgres" else 1
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kubearc-bench-")))
        db_url = stack.enter_context(database(backend))
        ports = [free_port() for _ in range(replicas)]
        public = None
        if replicas > 1:
            from cryptography.fernet import Fernet

            os.environ[ENCRYPTION_KEY] = Fernet.generate_key().decode()  # one data key for all replicas
            lb = stack.enter_context(haproxy(tmp / "lb", ports))
            public = f"https://localhost:{lb}"
            report.notes.append(f"{replicas} hub replicas behind HAProxy (TCP mode, round robin) at {public}")
        state = tmp / "state-0"
        log(f"{backend}: bootstrapping the store ({db_url or 'SQLite in ' + str(state)})")
        user_token = arun(bootstrap(state, ports[0], db_url, public))
        identities = None
        if args.seed == "store":
            t = time.perf_counter()
            identities = arun(seed_store(state, ports[0], db_url, public, cluster_names(args.clusters)))
            report.notes.append(f"seeding through the store took {time.perf_counter() - t:.0f} s")
        hubs = [
            HubProcess(tmp / f"state-{i}", port, db_url, tmp / f"hub-{i}.log", public)
            for i, port in enumerate(ports)
        ]
        try:
            for hub in hubs:
                hub.start()
                log(f"{backend}: hub pid {hub.pid} listening on {hub.url}")
            Bench(args, gen, hubs, public or hubs[0].url, user_token, identities).run(report)
        except Exception as exc:
            report.failures.append(f"aborted: {exc}")
            for hub in hubs:
                print(f"hub {hub.port} log tail:\n{hub.tail()}", file=sys.stderr)
        finally:
            for hub in hubs:
                hub.stop()
            os.environ.pop(ENCRYPTION_KEY, None)
    return report


def print_report(report: Report, args: argparse.Namespace) -> None:
    print()
    print(
        f"== {report.backend}: {args.clusters} clusters, concurrency {args.concurrency}, "
        f"{args.procs} load-generator process(es), {args.duration:.0f} s measured per endpoint "
        f"in {args.rounds} alternating slices =="
    )
    print(HEADER)
    for row in report.rows:
        print(row.line())
    hb, base = report.heartbeat, report.baseline
    if hb and base and base.rate > 0:
        print(
            f"  heartbeat / no-op: throughput {hb.rate / base.rate:.2f}x, "
            f"p50 latency {hb.p50 / base.p50:.2f}x, p99 latency {hb.p99 / base.p99:.2f}x"
        )
    for note in report.notes:
        print(f"  {note}")
    print(f"  result: {'OK' if not report.failures else 'FAILED'}")
    for failure in report.failures:
        print(f"    ! {failure}")


def print_summary(reports: list[Report]) -> None:
    print()
    print("== summary ==")
    print(f"  {'backend':<10} {'heartbeats/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'no-op/s':>9} {'ratio':>6}")
    for r in reports:
        hb, base = r.heartbeat, r.baseline
        if hb and base:
            print(
                f"  {r.backend:<10} {hb.rate:>12.1f} {hb.p50:>8.2f} {hb.p99:>8.2f} {base.rate:>9.1f}"
                f" {hb.rate / base.rate:>6.2f}"
            )
        else:
            print(f"  {r.backend:<10} (no figures: {r.failures[:1]})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = Parser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    ap.add_argument("--clusters", type=int, default=10_000)
    ap.add_argument("--duration", type=float, default=30.0, help="measured seconds per endpoint and backend")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight (keep-alive connections)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating heartbeat/no-op slices")
    ap.add_argument("--procs", type=int, default=2, help="load-generator processes (see README)")
    ap.add_argument(
        "--seed",
        choices=["api", "store"],
        help="register and onboard through the API, or in bulk through the store "
        "(default: the API up to 10,000 clusters, the store above)",
    )
    ap.add_argument("--replicas", type=int, default=1, help="hub replicas behind HAProxy (PostgreSQL)")
    ap.add_argument(
        "--rates", default="333,2000", help="offered heartbeats/s of the open-loop phases ('' for none)"
    )
    ap.add_argument("--rate-seconds", type=float, default=10.0, help="measured seconds per offered rate")
    ap.add_argument(
        "--fleet-rate",
        type=float,
        default=100.0,
        help="offered heartbeats/s each on a new TLS connection with a fresh token (0: skip); every "
        "one costs a handshake on both sides, and this machine runs both",
    )
    args = ap.parse_args(argv)
    try:
        args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        ap.error(f"--rates: {args.rates!r} is not a comma-separated list of heartbeats per second")
    if any(r <= 0 for r in args.rates) or args.rate_seconds <= 0 or args.replicas < 1 or args.fleet_rate < 0:
        ap.error("--rates and --rate-seconds must be > 0, --fleet-rate >= 0, --replicas >= 1")
    args.seed = args.seed or ("store" if args.clusters > 10_000 else "api")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = set(args.backends) - {"sqlite", "postgres"}
    if bad or not args.backends:
        ap.error(f"--backends: unknown {sorted(bad)}; use sqlite and/or postgres")
    if args.clusters < 1 or args.concurrency < 1 or args.rounds < 1 or args.procs < 1 or args.duration <= 0:
        ap.error("--clusters, --concurrency, --rounds and --procs must be >= 1 and --duration > 0")
    if args.duration / args.rounds + SLICE_WARMUP + TOKEN_MARGIN > 300:
        ap.error("a slice (--duration / --rounds) must fit in an agent token's 5-minute life; add --rounds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, client loop {_loop_factory().__module__}")
    gen = LoadGen(args.procs)
    reports = []
    try:
        for backend in args.backends:
            reports.append(bench_backend(backend, args, gen))
            print_report(reports[-1], args)
    finally:
        gen.close()
    print_summary(reports)
    return 1 if any(r.failures for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
