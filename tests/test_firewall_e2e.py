"""A cluster behind a real firewall: onboarded from inside, used from outside through the tunnel only.

The data center is this machine's network namespace: the apiserver stand-in on
the node's bridge and the agents the node emulator runs from the chart helm
applied. The internet is another namespace (`kinet`) holding the hub with its
relay and the remote user. nftables on the data center's side drops every new
connection arriving from the internet; only connections the data center opens
(the agents dialling out) carry traffic back. The admin runs `kubearc connect`
inside the data center; the user, outside, runs `kubearc proxy` and kubectl.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kubearc.azurerbac import APISERVER_CONFIG_DIR, GUARD_MANIFESTS
from kubearc.cli import app
from tests import node_emulator
from tests.apiserver import ApiServer, NodeSpec
from tests.apiserver.kubectl import kubectl_binary
from tests.clusters import SUB
from tests.tunnel_stack import readline_within

pytestmark = pytest.mark.sqlite_only

KUBEARC = (sys.executable, "-m", "kubearc.cli")
RESOURCE = f"/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Kubernetes/connectedClusters/dc1"
NODE_IP, GATEWAY, OUTSIDE = "10.77.0.1", "10.88.0.1", "10.88.0.2"
PASSWORD = "correct horse battery"
RULES = """
table inet kubearc_firewall {
  chain input {
    type filter hook input priority 0; policy accept;
    iifname "kx0" ct state established,related accept
    iifname "kx0" drop
  }
  chain forward {
    type filter hook forward priority 0; policy accept;
    iifname "kx0" ct state established,related accept
    iifname "kx0" drop
  }
}
"""


def why_not() -> str | None:
    reason = node_emulator.available()
    if reason:
        return reason
    if shutil.which("nft") is None:
        return "nftables is not installed (.ci/run installs it: apt-get install nftables)"
    if kubectl_binary() is None:
        return "kubectl is not installed"
    return None


def sh(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def outside(*cmd: str, **kwargs: object) -> subprocess.Popen[bytes]:
    """A process on the internet side."""
    return subprocess.Popen(["ip", "netns", "exec", "kinet", *cmd], **kwargs)  # type: ignore[call-overload]


def internet() -> None:
    subprocess.run(["ip", "netns", "del", "kinet"], capture_output=True)
    subprocess.run(["ip", "link", "del", "kx0"], capture_output=True)
    sh("ip", "netns", "add", "kinet")
    sh("ip", "link", "add", "kx0", "type", "veth", "peer", "name", "eth0", "netns", "kinet")
    sh("ip", "addr", "add", f"{GATEWAY}/30", "dev", "kx0")
    sh("ip", "link", "set", "kx0", "up")
    sh("ip", "-n", "kinet", "addr", "add", f"{OUTSIDE}/30", "dev", "eth0")
    sh("ip", "-n", "kinet", "link", "set", "eth0", "up")
    sh("ip", "-n", "kinet", "link", "set", "lo", "up")
    sh("ip", "-n", "kinet", "route", "add", "10.77.0.0/24", "via", GATEWAY)  # replies reach the agents
    sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    done = subprocess.run(["nft", "-f", "-"], input=RULES, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def teardown_internet() -> None:
    subprocess.run(["nft", "delete", "table", "inet", "kubearc_firewall"], capture_output=True)
    subprocess.run(["ip", "link", "del", "kx0"], capture_output=True)
    subprocess.run(["ip", "netns", "del", "kinet"], capture_output=True)


@dataclass
class World:
    root: Path
    api: ApiServer
    hub_url: str
    hub_ca: Path
    admin: CliRunner
    env: dict[str, str]
    node: node_emulator.NodeEmulator
    state: Path  # the hub's state directory (the admin's `kubearc admin` commands)


def kubectl_outside(
    kubeconfig: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """kubectl run by the remote user, on the internet's side of the firewall."""
    argv = [*kubectl_argv(kubeconfig), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def kubectl_argv(kubeconfig: Path) -> list[str]:
    return ["ip", "netns", "exec", "kinet", kubectl_binary() or "kubectl", "--kubeconfig", str(kubeconfig)]


def with_plugin(env: dict[str, str]) -> dict[str, str]:
    """kubectl finds the exec plugin `kubearc` on PATH, as after `pip install kubearc`."""
    return {**env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def follow_logs(
    kubectl: list[str], api: ApiServer, line: str, env: dict[str, str] | None = None
) -> list[str]:
    """`kubectl logs -f hello`: its first line, then the lines up to `line`, written while it follows
    (at most three after the first)."""
    follow = subprocess.Popen(
        [*kubectl, "logs", "-f", "hello", "-n", "default"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert follow.stdout is not None
        lines = [readline_within(follow.stdout, 60)]
        api.append_log("default", "hello", line)
        while lines[-1] != f"{line}\n" and len(lines) < 4:
            lines.append(readline_within(follow.stdout, 60))
        return lines
    finally:
        follow.terminate()
        follow.wait(30)


def wait_for_file(path: Path, process: subprocess.Popen[bytes], log: Path, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not path.exists():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.2)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    reason = why_not()
    if reason:
        pytest.skip(reason)
    with node_emulator.exclusive_network():  # one run at a time owns the node network
        node_emulator.bridge(NODE_IP)
        internet()
        processes: list[subprocess.Popen[bytes]] = []
        api = ApiServer(nodes=[NodeSpec("node-1", cpu="4")], host=NODE_IP).start()
        node = node_emulator.NodeEmulator(api, NODE_IP).start()
        try:
            port, relay_port = free_port(), free_port()
            state = tmp_path / "hub"
            env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEARC_")}
            env |= {
                "KUBEARC_CONFIG_DIR": str(tmp_path / "config"),
                "KUBEARC_SUBSCRIPTION": SUB,
                "PYTHONUNBUFFERED": "1",
            }
            log = tmp_path / "hub.log"
            hub = outside(
                sys.executable,
                "-m",
                "kubearc.cli",
                "hub",
                "--state-dir",
                str(state),
                "--host",
                "0.0.0.0",
                "--port",
                str(port),
                "--relay-port",
                str(relay_port),
                "--public-url",
                f"https://{OUTSIDE}:{port}",
                "--relay-url",
                f"wss://{OUTSIDE}:{relay_port}",
                env=env,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
            )
            processes.append(hub)
            ca = state / "tls" / "ca.crt"
            wait_for_file(ca, hub, log)
            deadline = time.monotonic() + 60
            while "cluster-connect relay" not in log.read_text(errors="replace"):
                assert hub.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.2)
            user = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "kubearc.cli",
                    "admin",
                    "user",
                    "create",
                    "frank@kubearc.test",
                    "--state-dir",
                    str(state),
                    "--password-stdin",
                ],
                input=PASSWORD,
                capture_output=True,
                text=True,
                env=env,
            )
            assert user.returncode == 0, user.stderr
            granted = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "kubearc.cli",
                    "admin",
                    "role-assignment",
                    "create",
                    "--assignee",
                    "frank@kubearc.test",
                    "--role",
                    "Owner",
                    "--scope",
                    f"/subscriptions/{SUB}",
                    "--state-dir",
                    str(state),
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            assert granted.returncode == 0, granted.stderr
            monkeypatch.setenv("KUBEARC_CONFIG_DIR", env["KUBEARC_CONFIG_DIR"])
            monkeypatch.setenv("KUBEARC_SUBSCRIPTION", SUB)
            admin = CliRunner()
            hub_url = f"https://{OUTSIDE}:{port}"
            signed = admin.invoke(
                app,
                [
                    "login",
                    "--hub",
                    hub_url,
                    "--ca-file",
                    str(ca),
                    "-u",
                    "frank@kubearc.test",
                    "--password-stdin",
                ],
                input=PASSWORD + "\n",
            )
            assert signed.exit_code == 0, signed.output
            yield World(tmp_path, api, hub_url, ca, admin, env, node, state)
        finally:
            for process in processes:
                process.terminate()
                process.wait(30)
            node.stop()
            api.stop()
            teardown_internet()
            node_emulator.remove_bridge()


def test_a_cluster_behind_a_firewall_is_reached_through_the_tunnel_and_nothing_else(world: World) -> None:
    kubeconfig = world.api.kubeconfig(world.root / "admin.kubeconfig")
    world.api.add_pod("hello", "default", containers=["app"])
    world.api.append_log("default", "hello", "started")

    # The admin, inside the data center, onboards the cluster: the agents dial out.
    connect = ["connect", "-n", "dc1", "-g", "rg1", "--kube-config", str(kubeconfig), "--timeout", "3m"]
    done = world.admin.invoke(app, [*connect, "--enable-features", "azure-rbac"])
    assert done.exit_code == 0, done.stderr
    assert f"Secret kube-system/{GUARD_MANIFESTS}" in done.output and APISERVER_CONFIG_DIR in done.output

    # Outside, a direct connection to the apiserver is dropped by the firewall.
    probe = outside(
        sys.executable,
        "-c",
        f"import socket; socket.create_connection(('{NODE_IP}', {world.api.port}), timeout=3)",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, err = probe.communicate(timeout=30)
    assert probe.returncode != 0 and b"timed out" in err

    # The remote user: kubearc proxy outside, kubectl through it.
    user_kubeconfig = world.root / "user.kubeconfig"
    log = world.root / "proxy.log"
    proxy_port = free_port()
    proxy = outside(
        sys.executable,
        "-m",
        "kubearc.cli",
        "proxy",
        "-n",
        "dc1",
        "-g",
        "rg1",
        "--port",
        str(proxy_port),
        "-f",
        str(user_kubeconfig),
        env={**world.env, "KUBEARC_PROXY_TOKEN": world.api.token},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while "Proxy is listening" not in log.read_text(errors="replace"):
            assert proxy.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)

        def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
            return kubectl_outside(user_kubeconfig, *args)

        pods = kubectl("get", "pods", "-n", "default", "-o", "name")
        agent = world.node.logs("kubearc-connect")
        why = f"{pods.stderr}\nproxy: {log.read_text(errors='replace')}\nagent: {agent}"
        assert pods.returncode == 0 and "pod/hello" in pods.stdout, why
        logs = kubectl("logs", "hello", "-n", "default")
        assert logs.returncode == 0 and "started" in logs.stdout, logs.stderr
        execd = kubectl("exec", "hello", "-n", "default", "--", "echo", "through", "the", "tunnel")
        assert execd.returncode == 0 and execd.stdout == "through the tunnel\n", execd.stderr

        # logs -f: a line the pod writes now arrives while kubectl follows.
        base = kubectl_argv(user_kubeconfig)
        assert follow_logs(base, world.api, "written while followed") == [
            "started\n",
            "written while followed\n",
        ]

        # port-forward: bytes to a pod port and back, through the tunnel.
        world.api.add_pod("echo", "default", containers=["app"], ports=[7000])
        world.api.set_port_forward_target("default", "echo", 7000, None)  # the pod's built-in echo
        port_forward_echoes(base, "ping through the firewall")
        entra_user_through_guard(world)
        entra_user_through_the_aad_proxy(world, kubeconfig)
    finally:
        proxy.terminate()
        proxy.wait(30)


def port_forward_echoes(kubectl: list[str], message: str, env: dict[str, str] | None = None) -> None:
    """`kubectl port-forward` to pod echo's port 7000 outside, and `message` there and back."""
    local = free_port()
    forward = subprocess.Popen(
        [*kubectl, "port-forward", "pod/echo", f"{local}:7000", "-n", "default"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert forward.stdout is not None and "Forwarding from" in readline_within(forward.stdout, 60)
        client = outside(
            sys.executable,
            "-c",
            f"import socket,sys; s=socket.create_connection(('127.0.0.1', {local}), timeout=10); "
            f"s.sendall({message.encode()!r}); sys.stdout.write(s.recv(100).decode())",
            stdout=subprocess.PIPE,
        )
        echoed, _ = client.communicate(timeout=60)
        assert echoed == message.encode()
    finally:
        forward.terminate()
        forward.wait(30)


def entra_user_through_guard(world: World) -> None:
    """The signed-in user (no cluster credential at all): kubectl's exec plugin `kubearc get-token`,
    the apiserver asking guard (TokenReview, SubjectAccessReview), guard asking the hub's RBAC."""
    # The admin places guard's webhook files on the control plane and configures the apiserver.
    manifests = world.api.store.find("", "secrets", "kube-system", GUARD_MANIFESTS)
    assert manifests is not None
    files = {
        f"{APISERVER_CONFIG_DIR}/{k}": base64.b64decode(v).decode() for k, v in manifests["data"].items()
    }
    world.api.use_webhooks(
        files,
        authentication_config_file=f"{APISERVER_CONFIG_DIR}/authn-webhook.kubeconfig",
        authentication_version="v1",
        authorization_config=f"{APISERVER_CONFIG_DIR}/authorization-config.yaml",
        resolve=world.node.service_address,
    )
    wait_ready(world, "kubearc-guard")
    grant(world, "frank@kubearc.test", "Azure Arc Kubernetes Viewer", RESOURCE)

    user_kubeconfig = world.root / "frank.kubeconfig"
    proxy = start_proxy(world, user_kubeconfig, "frank-proxy.log")
    try:
        env = with_plugin(world.env)
        written = user_kubeconfig.read_text()
        assert "get-token" in written and world.api.token not in written  # no cluster secret on the laptop

        def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
            return kubectl_outside(user_kubeconfig, *args, env=env)

        pods = kubectl("get", "pods", "-n", "default", "-o", "name")
        assert pods.returncode == 0 and "pod/hello" in pods.stdout, pods.stderr + world.node.logs(
            "kubearc-guard"
        )
        secrets = kubectl("get", "secrets", "-n", "default")
        assert secrets.returncode != 0
        assert (
            'secrets is forbidden: User "frank@kubearc.test" cannot list resource "secrets" in API group "" '
            'in the namespace "default"'
        ) in secrets.stderr
        execd = kubectl("exec", "hello", "-n", "default", "--", "true")
        assert execd.returncode != 0 and 'cannot create resource "pods/exec"' in execd.stderr, execd.stderr
        # What reached the apiserver: frank's own token, reviewed by guard; nothing impersonated.
        reviews = world.api.state.webhooks.calls if world.api.state.webhooks else []
        assert {kind for kind, _ in reviews} == {"TokenReview", "SubjectAccessReview"}
        asked = [body["spec"] for kind, body in reviews if kind == "SubjectAccessReview"]
        assert all(spec["user"] == "frank@kubearc.test" for spec in asked)
        assert any((spec.get("resourceAttributes") or {}).get("resource") == "pods" for spec in asked)
        seen = [r for r in world.api.state.audit if r.user == "frank@kubearc.test"]
        assert seen and all(r.impersonated is None for r in seen)
    finally:
        proxy.terminate()
        proxy.wait(30)


def wait_ready(world: World, deployment: str, within: float = 120) -> None:
    deadline = time.monotonic() + within
    while True:
        found = world.api.store.find("apps", "deployments", "azure-arc", deployment) or {}
        status, meta = found.get("status") or {}, found.get("metadata") or {}
        if status.get("readyReplicas") == 1 and status.get("observedGeneration") == meta.get("generation", 1):
            return
        assert time.monotonic() < deadline, world.node.logs(deployment)
        time.sleep(0.5)


def start_proxy(world: World, kubeconfig: Path, log_name: str) -> subprocess.Popen[bytes]:
    """`kubearc proxy` outside, as the signed-in user (no cluster credential), until it listens."""
    log = world.root / log_name
    proxy = outside(
        *KUBEARC,
        "proxy",
        "-n",
        "dc1",
        "-g",
        "rg1",
        "--port",
        str(free_port()),
        "-f",
        str(kubeconfig),
        env=world.env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while "Proxy is listening" not in log.read_text(errors="replace"):
        if proxy.poll() is not None or time.monotonic() > deadline:
            proxy.kill()
            raise AssertionError(log.read_text(errors="replace"))
        time.sleep(0.2)
    return proxy


def entra_user_through_the_aad_proxy(world: World, admin_kubeconfig: Path) -> None:
    """Impersonation mode, for an apiserver that cannot call a webhook: the kube-aad-proxy the chart
    runs takes the user's token, asks the hub's RBAC, and calls the apiserver as its service account
    with Impersonate-* headers; the connect agent's target becomes its Service."""
    world.api.state.webhooks = None  # the apiserver no longer calls guard (a managed control plane)
    enabled = world.admin.invoke(
        app,
        [
            "cluster",
            "enable-features",
            "-n",
            "dc1",
            "-g",
            "rg1",
            "--features",
            "azure-rbac",
            "--azure-rbac-mode",
            "impersonation",
            "--kube-config",
            str(admin_kubeconfig),
        ],
    )
    assert enabled.exit_code == 0, enabled.output
    wait_ready(world, "kubearc-aad-proxy")
    wait_ready(world, "kubearc-connect")
    user_kubeconfig = world.root / "frank-impersonated.kubeconfig"
    env = with_plugin(world.env)
    cmd = kubectl_argv(user_kubeconfig)

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return kubectl_outside(user_kubeconfig, *args, env=env)

    deadline = time.monotonic() + 90
    while True:  # until the hub names the aad-proxy's certificate as the cluster's (its first one)
        proxy = start_proxy(world, user_kubeconfig, "frank-impersonated-proxy.log")
        world.api.state.audit.clear()
        pods = kubectl("get", "pods", "-n", "default", "-o", "name")
        if pods.returncode == 0 or time.monotonic() > deadline:
            break
        proxy.terminate()
        proxy.wait(30)
        time.sleep(2)
    try:
        why = pods.stderr + world.node.logs("kubearc-aad-proxy")
        assert pods.returncode == 0 and "pod/hello" in pods.stdout, why
        seen = [r for r in world.api.state.audit if r.impersonated is not None]
        assert seen and {r.impersonated.user for r in seen if r.impersonated} == {"frank@kubearc.test"}
        assert {r.user for r in seen} == {"system:serviceaccount:azure-arc:kubearc-aad-proxy"}
        secrets = kubectl("get", "secrets", "-n", "default")
        assert secrets.returncode != 0 and "forbidden" in secrets.stderr.lower(), secrets.stderr
        # A Writer in namespace default (an assignment at the namespace's scope) may exec and follow logs.
        grant(world, "frank@kubearc.test", "Azure Arc Kubernetes Writer", f"{RESOURCE}/namespaces/default")
        execd = kubectl("exec", "hello", "-n", "default", "--", "echo", "as", "frank")
        assert execd.returncode == 0 and execd.stdout == "as frank\n", execd.stderr
        lines = follow_logs(cmd, world.api, "followed by frank", env)
        assert lines[0] == "started\n" and lines[-1] == "followed by frank\n"
        port_forward_echoes(cmd, "forwarded for frank", env)
    finally:
        proxy.terminate()
        proxy.wait(30)


def grant(world: World, who: str, role: str, scope: str) -> None:
    """A role assignment, made by the hub's admin (`kubearc admin`, on the hub's state directory)."""
    assign = ["role-assignment", "create", "--assignee", who, "--role", role, "--scope", scope]
    made = subprocess.run(
        [*KUBEARC, "admin", *assign, "--state-dir", str(world.state)],
        capture_output=True,
        text=True,
        env=world.env,
    )
    assert made.returncode == 0, made.stderr
