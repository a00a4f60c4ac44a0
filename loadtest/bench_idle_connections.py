"""Idle TLS connections against a real `kubearc hub`: how many one address can hold, what each costs.

Why: issue 10 found that connections which finish the TLS handshake and then send
nothing were held for ever, exhausted the hub's file descriptors and cost about
270 KB each. This opens N such connections from 127.0.0.1 to the hub's API port
and to its relay port (blocking `ssl` sockets, one after another, so the client
side stays small), and prints for each port:

- how many connections were held after the handshake, and how many were refused
  (reset, or closed before the handshake finished) and how fast;
- the hub's RSS before, at the peak and after the connections are released,
  and the RSS per held connection;
- whether a request from another address (127.0.0.2) succeeds meanwhile: the
  baseline is the same request before the flood;
- how many held connections the hub itself has closed after `--hold` seconds
  (the first-request timeout).

Run: `.venv/bin/python -m loadtest.bench_idle_connections [--connections 3000] [--hold 15]
[-- extra hub flags]`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from foundation.gate import raise_fd_limit
from loadtest import Parser
from loadtest.procstat import free_port


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def hub_process(state: Path, extra: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    port, relay_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "kubearc.cli", "hub", "--state-dir", str(state), "--host", "0.0.0.0"]
    cmd += ["--port", str(port), "--relay-port", str(relay_port), "--public-url", f"https://localhost:{port}"]
    proc = subprocess.Popen([*cmd, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ca = state / "tls" / "ca.crt"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, httpx.HTTPError):
                if ca.exists() and httpx.get(f"https://127.0.0.1:{port}/healthz", verify=str(ca)).is_success:
                    break
            time.sleep(0.2)
        else:
            raise SystemExit("hub did not start")
        yield proc, port, relay_port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class Flood:
    held: list[ssl.SSLSocket]
    refused: int
    refusal_seconds: list[float]


def flood(port: int, ca: Path, n: int, source: str = "127.0.0.1") -> Flood:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    held: list[ssl.SSLSocket] = []
    refused, refusal = 0, []
    for _ in range(n):
        start = time.monotonic()
        raw = None
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
            held.append(ctx.wrap_socket(raw, server_hostname="localhost"))
        except (OSError, ssl.SSLError):
            if raw is not None:
                raw.close()
            refused += 1
            refusal.append(time.monotonic() - start)
    return Flood(held, refused, refusal)


def closed_by_peer(conns: list[ssl.SSLSocket]) -> int:
    closed = 0
    for c in conns:
        c.setblocking(False)
        try:
            if c.recv(1) == b"":
                closed += 1
        except (ssl.SSLWantReadError, BlockingIOError):
            pass
        except (OSError, ssl.SSLError):
            closed += 1
    return closed


def other_client_ok(port: int, ca: Path) -> str:
    transport = httpx.HTTPTransport(local_address="127.0.0.2", verify=str(ca))
    with httpx.Client(transport=transport, timeout=10) as client:
        try:
            path = "/healthz"
            r = client.get(f"https://localhost:{port}{path}")
            return f"{r.status_code} in {r.elapsed.total_seconds() * 1000:.0f} ms"
        except httpx.HTTPError as exc:
            return f"failed: {type(exc).__name__}: {exc}"[:120]


def run_port(name: str, proc: subprocess.Popen[bytes], port: int, ca: Path, args: argparse.Namespace) -> None:
    print(f"\n== {name} port {port}: {args.connections} idle TLS connections from 127.0.0.1")
    print(f"   another client before: {other_client_ok(port, ca)}")
    base = rss_kb(proc.pid)
    start = time.monotonic()
    result = flood(port, ca, args.connections)
    took = time.monotonic() - start
    peak = rss_kb(proc.pid)
    held = len(result.held)
    print(f"   held {held}, refused {result.refused} ({took:.1f} s to open)")
    if result.refusal_seconds:
        worst = max(result.refusal_seconds) * 1000
        mean = sum(result.refusal_seconds) / len(result.refusal_seconds) * 1000
        print(f"   a refusal took {mean:.1f} ms on average, {worst:.1f} ms at worst")
    print(f"   another client meanwhile: {other_client_ok(port, ca)}")
    per = (peak - base) / held if held else float("nan")
    before, held_mb = base / 1024, peak / 1024
    print(f"   hub RSS {before:.0f} MB before, {held_mb:.0f} MB held: {per:.0f} KB per held connection")
    time.sleep(args.hold)
    print(f"   after {args.hold:.0f} s the hub had closed {closed_by_peer(result.held)} of {held}")
    for c in result.held:
        c.close()
    time.sleep(3)
    print(f"   hub RSS after release {rss_kb(proc.pid) / 1024:.0f} MB")


def main() -> None:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--hold", type=float, default=15.0, help="seconds to hold before counting closes")
    parser.add_argument("hub_flags", nargs="*", help="extra `kubearc hub` flags (after --)")
    args = parser.parse_args()
    print(f"file-descriptor limit here: {raise_fd_limit()}; machine: {os.cpu_count()} CPUs")
    for name in ("api", "relay"):  # a fresh hub for each: what one port's burst freed skews the other's
        with tempfile.TemporaryDirectory() as tmp, hub_process(Path(tmp), args.hub_flags) as hub:
            proc, port, relay = hub
            run_port(name, proc, port if name == "api" else relay, Path(tmp) / "tls" / "ca.crt", args)


if __name__ == "__main__":
    main()
