"""Relay sessions at fleet scale: N idle agent sessions on one relay replica, then a reconnect storm.

Why: DESIGN section 5 sizes a relay replica for 10,000 agent sessions, and peers are
known for reconnect storms that take down their control plane (REFERENCE section 5).
This runs a real `kubearc hub` (PostgreSQL) and a real `kubearc relay` process, seeds
N clusters through the store (as `bench_hub --seed store`), and holds one agent
session per cluster with the real `proxy.dialler.Dialler` (its default PING liveness
and backoff), spread over load-generator processes. It prints:

- the relay's memory per agent session (RSS with N sessions minus RSS with none,
  over N) and its CPU per second with N idle sessions (PINGs every 10 s each), next
  to the same relay with no session, measured in the same run;
- the reconnect storm: the relay is killed (-9) and a new one started on its port;
  the time from the new relay listening until 50 %, 95 % and 100 % of the agents are
  back, the agents' dials meanwhile, and what the hub saw: agent verifications
  (`/agent/v1/whoami`, one per session) per second at the peak, and their p99.

Run: `.venv/bin/python -m loadtest.bench_relay_sessions [--sessions 10000] [--procs 2]
[--idle 30]`. See loadtest/README.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtest import Parser
from loadtest.bench_hub import ROOT, HubProcess, arun, bootstrap, cluster_names, database, log, seed_store
from loadtest.procstat import cpu_seconds, free_port

WHOAMI = "/agent/v1/whoami"


# --------------------------------------------------------------------------- the agents (spawned)


@dataclass(frozen=True)
class Agents:
    relay_url: str  # wss://localhost:PORT/relay/v1/agent
    hub_url: str
    ca: str
    identities: list[tuple[bytes, bytes]]  # (key PEM, certificate PEM) per cluster
    open_per_second: float


def run_agents(spec: Agents, stop: MpEvent, counters: Any, index: int) -> None:
    """Hold one agent session per identity until `stop`; `counters[index]` = dials made so far."""
    import logging

    import uvloop

    from foundation import pki, tokens
    from proxy.dialler import Dialler, RelayCredential

    logging.getLogger("kubearc").setLevel(logging.ERROR)  # each agent's redial lines, times thousands

    async def main() -> None:
        diallers: list[Dialler] = []
        done = asyncio.Event()

        def source(pair: pki.KeyPair) -> Any:
            async def credentials() -> RelayCredential:
                token = tokens.make_agent_token(pair, spec.hub_url)
                return RelayCredential(spec.relay_url, token, time.time() + tokens.AGENT_TOKEN_TTL)

            return credentials

        async with asyncio.TaskGroup() as group:
            for i, (key_pem, cert_pem) in enumerate(spec.identities):
                pair = pki.KeyPair(pki.load_private_key(key_pem), pki.load_cert(cert_pem))
                dialler = Dialler(source(pair), ca_file=spec.ca, renew_interval=120.0, name="bench agent")
                diallers.append(dialler)
                group.create_task(dialler.run(done))
                if i % 50 == 49:
                    await asyncio.sleep(50 / spec.open_per_second)  # a fleet coming up, not a storm
            while not stop.is_set():
                counters[index] = sum(d.sessions_started + d.failed_attempts for d in diallers)
                await asyncio.sleep(0.2)
            done.set()

    uvloop.run(main())


# --------------------------------------------------------------------------- the relay


class RelayProcess:
    def __init__(self, hub: HubProcess, port: int, log_file: Path, sessions: int) -> None:
        self.hub, self.port, self.log_file, self.sessions_wanted = hub, port, log_file, sessions
        self.proc: subprocess.Popen[bytes] | None = None
        self.ctx = ssl.create_default_context(cafile=hub.ca)

    def start(self) -> float:
        """Start it; the monotonic time it answered /healthz."""
        tls = self.hub.state_dir / "tls"
        cmd = [sys.executable, "-m", "kubearc.cli", "relay", "--hub", self.hub.url, "--hub-ca", self.hub.ca]
        cmd += [
            "--port",
            str(self.port),
            "--tls-cert",
            str(tls / "tls.crt"),
            "--tls-key",
            str(tls / "tls.key"),
        ]
        cmd += ["--log-level", "warning", "--replica-id", "relay-bench"]
        # Every agent here dials from 127.0.0.1; a fleet comes from as many addresses as clusters.
        cmd += ["--max-pending-per-address", str(max(256, self.sessions_wanted))]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEARC_")}
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"https://localhost:{self.port}/healthz", verify=self.ctx, timeout=1).is_success:
                    return time.monotonic()
            time.sleep(0.02)
        raise RuntimeError("relay did not answer /healthz")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def sessions(self) -> float:
        return sample(
            f"https://localhost:{self.port}/metrics", self.ctx, "kubearc_relay_sessions", side="agent"
        )

    def refusals(self) -> dict[str, float]:
        """Connections the new relay's gate turned away so far, by reason."""
        name = "kubearc_relay_connections_refused_total"
        url = f"https://localhost:{self.port}/metrics"
        reasons = ("max_pending", "max_pending_per_address", "max_connections", "handshake", "header_timeout")
        return {r: sample(url, self.ctx, name, reason=r) for r in reasons}

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def sample(url: str, ctx: ssl.SSLContext, name: str, **labels: str) -> float:
    total = 0.0
    try:
        text = httpx.get(url, verify=ctx, timeout=5).text
    except httpx.HTTPError:
        return float("nan")
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def whoami_stats(hub: HubProcess) -> tuple[float, float]:
    """(whoami requests answered so far, how many took over 0.1 s) from the hub's histogram."""
    ctx = ssl.create_default_context(cafile=hub.ca)
    count = sample(f"{hub.url}/metrics", ctx, "kubearc_hub_http_request_duration_seconds_count", route=WHOAMI)
    fast = sample(
        f"{hub.url}/metrics", ctx, "kubearc_hub_http_request_duration_seconds_bucket", route=WHOAMI, le="0.1"
    )
    return count, count - fast


# --------------------------------------------------------------------------- the benchmark


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--procs", type=int, default=2, help="load-generator processes holding the sessions")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds the idle CPU is measured over")
    ap.add_argument("--open-rate", type=float, default=1000.0, help="sessions/s opened while setting up")
    args = ap.parse_args(argv)
    if args.sessions < 1 or args.procs < 1 or args.idle <= 0 or args.open_rate <= 0:
        ap.error("--sessions and --procs must be >= 1, --idle and --open-rate > 0")
    from foundation.gate import raise_fd_limit

    raise_fd_limit()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kubearc-relay-bench-")))
        db_url = stack.enter_context(database("postgres"))
        port, relay_port = free_port(), free_port()
        state = tmp / "state"
        arun(bootstrap(state, port, db_url))
        t = time.perf_counter()
        identities = arun(seed_store(state, port, db_url, None, cluster_names(args.sessions)))
        log(f"{args.sessions} clusters seeded in {time.perf_counter() - t:.0f} s")
        hub = HubProcess(state, port, db_url, tmp / "hub.log")
        hub.start()
        stack.callback(hub.stop)
        relay = RelayProcess(hub, relay_port, tmp / "relay.log", args.sessions)
        relay.start()
        stack.callback(relay.kill)

        # Baseline: the same relay with no session, over the same time.
        time.sleep(2)
        rss0, c0 = relay.rss_kb(), cpu_seconds([relay.pid])
        time.sleep(args.idle)
        idle0 = (cpu_seconds([relay.pid]) - c0) / args.idle

        pems = [(pair.key_pem, pair.cert_pem) for pair in identities]
        stop = mp.get_context("spawn").Event()
        counters = mp.get_context("spawn").Array("q", args.procs)
        share = -(-len(pems) // args.procs)
        workers = []
        for i in range(args.procs):
            spec = Agents(
                f"wss://localhost:{relay_port}/relay/v1/agent",
                hub.url,
                hub.ca,
                pems[i * share : (i + 1) * share],
                args.open_rate / args.procs,
            )
            worker = mp.get_context("spawn").Process(target=run_agents, args=(spec, stop, counters, i))
            worker.start()
            workers.append(worker)
        try:
            t = time.monotonic()
            while relay.sessions() < args.sessions:
                if time.monotonic() - t > 600:
                    raise RuntimeError(f"only {relay.sessions():.0f} sessions after 600 s")
                time.sleep(1)
            log(f"{args.sessions} agent sessions up in {time.monotonic() - t:.0f} s")
            time.sleep(15)  # past the first PINGs and renewals of the last sessions
            rss1, c1 = relay.rss_kb(), cpu_seconds([relay.pid])
            time.sleep(args.idle)
            idle1 = (cpu_seconds([relay.pid]) - c1) / args.idle

            # The storm: the relay dies; a new one takes its port.
            whoami0, slow0 = whoami_stats(hub)
            dials0 = sum(counters[:])
            relay.kill()
            log("relay killed; starting a new one")
            up = relay.start()
            marks: dict[int, float] = {}
            peak, last_count, last_t = 0.0, whoami0, time.monotonic()
            while len(marks) < 3 and time.monotonic() - up < 300:
                back = relay.sessions() / args.sessions
                now = time.monotonic()
                for pct in (50, 95, 100):
                    if back * 100 >= pct and pct not in marks:
                        marks[pct] = now - up
                count, _ = whoami_stats(hub)
                if now - last_t >= 1.0:
                    peak = max(peak, (count - last_count) / (now - last_t))
                    last_count, last_t = count, now
                time.sleep(0.2)
            whoami1, slow1 = whoami_stats(hub)
            dials = sum(counters[:]) - dials0
            resets = relay.refusals()
        finally:
            stop.set()
            for worker in workers:
                worker.join(60)
                if worker.is_alive():
                    worker.kill()

    n = args.sessions
    print()
    print(f"== one relay replica, {n} agent sessions ({args.procs} load-generator processes) ==")
    print(f"  relay RSS: {rss0 / 1024:.0f} MiB with no session, {rss1 / 1024:.0f} MiB with {n}")
    print(f"  memory per agent session: {(rss1 - rss0) / n:.1f} KB")
    print(
        f"  relay CPU while idle: {100 * idle0:.1f} % of a core with no session, "
        f"{100 * idle1:.1f} % with {n} ({1e6 * (idle1 - idle0) / n:.1f} us per session per second)"
    )
    print("== reconnect storm: relay killed (-9), a new one on its port ==")
    for pct in (50, 95, 100):
        at = marks.get(pct)
        print(
            f"  {pct:>3} % of agents back: "
            + (f"{at:.1f} s after it listened" if at is not None else "not within 300 s")
        )
    print(f"  agent dials during the storm: {dials} ({dials / n:.2f} per agent)")
    turned = ", ".join(f"{reason} {count:.0f}" for reason, count in resets.items() if count)
    print(f"  connections the new relay turned away: {turned or 'none'}")
    verified = whoami1 - whoami0
    print(
        f"  hub: {verified:.0f} agent verifications, peak {peak:.0f}/s, "
        f"{slow1 - slow0:.0f} of them slower than 100 ms"
    )
    return 0 if 95 in marks else 1


if __name__ == "__main__":
    sys.exit(main())
