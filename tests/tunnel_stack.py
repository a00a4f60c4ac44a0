"""The whole cluster-connect stack as separate processes, the way users run it.

`kubearc hub` (with its relay), `kubearc agent identity|metadata|connect` and
`kubearc proxy` are started as subprocesses through the real command line; the
apiserver stand-in runs in this process on real HTTPS. Users, roles and sign-in
go through `kubearc admin` and `kubearc login` (msal against the local issuer).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from foundation import pki
from hub.resources import cluster_id
from tests.apiserver import ApiServer

SUB = "00000000-0000-0000-0000-0000000000cc"
PASSWORD = "tunnel-user-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 60) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "kubearc.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert done.returncode == 0, f"kubearc {' '.join(args[:3])} failed: {done.stderr}"
    return done.stdout


@dataclass
class Process:
    """A long-running kubearc process whose stderr is kept in a file for diagnosis."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.output()}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not print {text!r}:\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass
class TunnelStack:
    root: Path
    apiserver: ApiServer
    hub_port: int = field(default_factory=free_port)
    relay_port: int = field(default_factory=free_port)
    processes: dict[str, Process] = field(default_factory=dict)
    name: str = "edge"
    group: str = "rg-tunnel"
    keep_heartbeating: bool = False  # a long-running metadata agent beside its first pass (the demo)
    extra_env: dict[str, str] = field(default_factory=dict)  # for every process started (KUBEARC_...)

    @property
    def hub_url(self) -> str:
        return f"https://localhost:{self.hub_port}"

    @property
    def hub_ca(self) -> Path:
        return self.root / "hub" / "tls" / "ca.crt"

    @property
    def resource_id(self) -> str:
        return cluster_id(SUB, self.group, self.name)

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("KUBEARC_")}
        return {
            **base,
            "KUBEARC_CONFIG_DIR": str(self.root / "user"),
            "KUBEARC_SUBSCRIPTION": SUB,
            "KUBEARC_STATE_DIR": str(self.root / "hub"),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
            **extra,
        }

    def spawn(self, name: str, *args: str, **env: str) -> Process:
        log = self.root / f"{name}.log"
        handle = log.open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubearc.cli", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=self.env(**env),
        )
        self.processes[name] = Process(name, proc, log)
        return self.processes[name]

    # ---- the steps ------------------------------------------------------------------------

    def start_hub(self, *extra: str) -> None:
        hub = self.spawn(
            "hub",
            "hub",
            "--port",
            str(self.hub_port),
            "--relay-port",
            str(self.relay_port),
            "--log-level",
            "info",
            *extra,
        )
        hub.wait_for("cluster-connect relay" if "--no-relay" not in extra else "local issuer")

    def sign_in(self, upn: str, role_scope: str | None, roles: list[str]) -> str:
        """Create a local user with `roles` at `role_scope` and sign in as them; returns the object id."""
        env = self.env()
        user = json.loads(cli("admin", "user", "create", upn, "--password-stdin", env=env, stdin=PASSWORD))
        for role in roles:
            cli(
                "admin",
                "role-assignment",
                "create",
                "--assignee",
                upn,
                "--role",
                role,
                "--scope",
                role_scope or self.resource_id,
                env=env,
            )
        cli(
            "login",
            "--hub",
            self.hub_url,
            "--ca-file",
            str(self.hub_ca),
            "-u",
            upn,
            "--password-stdin",
            env=env,
            stdin=PASSWORD,
        )
        return str(user["id"] if "id" in user else user["objectId"])

    def create_cluster(self, token: str) -> pki.PrivateKey:
        key = pki.new_key()
        (self.root / "onboarding.key").write_bytes(pki.key_to_pem(key))
        body = {
            "location": "local",
            "properties": {
                "agentPublicKeyCertificate": pki.public_key_der_b64(key.public_key()),
                "distribution": "generic",
            },
        }
        r = httpx.put(
            f"{self.hub_url}{self.resource_id}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            verify=ssl.create_default_context(cafile=str(self.hub_ca)),
        )
        assert r.status_code == 201, r.text
        return key

    def start_agents(self, connect_to: str | None = None) -> None:
        """Identity and metadata once, then the connect agent (to `connect_to` HOST:PORT if given,
        e.g. a kube-aad-proxy, else to the apiserver of the kubeconfig)."""
        kubeconfig = self.apiserver.kubeconfig(self.root / "agent.kubeconfig", tls_server_name=True)
        common = [
            "--hub",
            self.hub_url,
            "--hub-ca",
            str(self.hub_ca),
            "--kubeconfig",
            str(kubeconfig),
            "--log-format",
            "text",
        ]
        identity = f"file:{self.root / 'identity'}"
        cli(
            "agent",
            "identity",
            *common,
            "--resource-id",
            self.resource_id,
            "--onboarding-key",
            str(self.root / "onboarding.key"),
            "--store",
            identity,
            "--once",
            env=self.env(),
        )
        cli("agent", "metadata", *common, "--identity", identity, "--once", env=self.env())
        if (
            self.keep_heartbeating
        ):  # as in a cluster: heartbeats every --interval, the cluster stays Connected
            self.spawn("metadata", "agent", "metadata", *common, "--identity", identity, "--interval", "30")
        target = ["--apiserver", connect_to] if connect_to else []
        connect = self.spawn("connect", "agent", "connect", *common, "--identity", identity, *target)
        connect.wait_for("connected to the relay")

    def start_proxy(self, port: int, kubeconfig: Path, token: str, name: str = "proxy") -> Process:
        # The service-account token goes through the environment: never on a command line (ps shows it).
        proxy = self.spawn(
            name,
            "proxy",
            "-n",
            self.name,
            "-g",
            self.group,
            "--port",
            str(port),
            "-f",
            str(kubeconfig),
            KUBEARC_PROXY_TOKEN=token,
        )
        proxy.wait_for("Proxy is listening")
        return proxy

    def up(self) -> None:
        """Hub and relay, a signed-in cluster owner, the cluster resource, and its agents."""
        self.start_hub()
        self.onboard()

    def onboard(self) -> None:
        """A signed-in cluster owner, the cluster resource, and its agents (the relay is up)."""
        scope = "/subscriptions/" + SUB
        self.sign_in(new_upn(), scope, ["Owner", "Azure Arc Enabled Kubernetes Cluster User Role"])
        self.create_cluster(user_token(self))
        self.start_agents()

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()


@contextlib.contextmanager
def tunnel_to(apiserver: ApiServer, root: Path) -> Iterator[tuple[TunnelStack, Path]]:
    """The whole stack in front of `apiserver`; yields it and the kubeconfig `kubearc proxy` wrote."""
    stack = TunnelStack(root, apiserver)
    try:
        stack.up()
        kubeconfig = root / "user.kubeconfig"
        stack.start_proxy(free_port(), kubeconfig, apiserver.token)
        yield stack, kubeconfig
    finally:
        stack.stop()


def user_token(stack: TunnelStack) -> str:
    """The signed-in user's hub token, from the CLI's msal cache (as `kubearc` itself gets it)."""
    os.environ["KUBEARC_CONFIG_DIR"] = str(stack.root / "user")
    try:
        from kubearc import session

        return session.access_token()
    finally:
        del os.environ["KUBEARC_CONFIG_DIR"]


def new_upn() -> str:
    return f"user-{uuid.uuid4().hex[:8]}@kubearc.test"


def readline_within(stream: IO[str], seconds: float) -> str:
    """The next line of a child's text pipe, or AssertionError after `seconds` (never a hung test)."""
    with selectors.DefaultSelector() as waiting:
        waiting.register(stream, selectors.EVENT_READ)
        if not waiting.select(seconds):
            raise AssertionError(f"no line within {seconds:.0f}s")
    return stream.readline()
