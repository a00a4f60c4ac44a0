"""A hub restart, even a SIGKILL, loses no accepted heartbeat or resource."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from hub.config import HubConfig
from hub.context import open_hub
from hub.issuer.tokens import issue_access_token
from hub.rbac.assignments import create_assignment
from tests.clusters import SUB, connected, onboarder
from tests.conftest import RunningHub


def test_restart_keeps_everything(hub: RunningHub) -> None:
    token = onboarder(hub)
    clusters = [connected(hub, f"keep-{i}", token) for i in range(3)]
    acked = {}
    for c in clusters:
        r = c.heartbeat()
        assert r.status_code == 200
        acked[c.resource_id] = r.json()["lastConnectivityTime"]
    hub.restart()
    with hub.client(token) as api:
        for cluster in clusters:
            props = api.get(cluster.resource_id).json()["properties"]
            assert props["connectivityStatus"] == "Connected"
            assert props["lastConnectivityTime"].replace("Z", "+00:00") == acked[cluster.resource_id]
    # Keys survived too: old tokens and identity certificates still verify.
    assert clusters[0].heartbeat().status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(
    state: Path, port: int, database_url: str, relay_port: int | None = None
) -> subprocess.Popen[bytes]:
    """`kubearc hub` in its own process; its relay too when given a port."""
    relay = ["--relay-port", str(relay_port)] if relay_port else ["--no-relay"]
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kubearc.cli",
            "hub",
            "--state-dir",
            str(state),
            "--port",
            str(port),
            *relay,
            "--database-url",
            database_url,
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_ready(url: str, ca: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "hub exited"
        if ca.exists():
            try:
                if httpx.get(f"{url}/healthz", verify=ssl.create_default_context(cafile=str(ca))).is_success:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    raise TimeoutError("hub did not become ready")


def _owner_token(state: Path, port: int, database_url: str) -> str:
    """A token of a new Owner of the test subscription, made in the hub's state before it starts."""
    user = str(uuid.uuid4())

    async def bootstrap() -> str:
        hub = await open_hub(HubConfig(state_dir=state, port=port, database_url=database_url))
        try:
            async with hub.sessions() as session:
                await create_assignment(session, f"/subscriptions/{SUB}", "Owner", user)
            return issue_access_token(
                hub,
                oid=user,
                audience="api://kubearc-hub",
                kind="user",
                client_id="tests",
                upn="owner@kubearc.test",
            )[0]
        finally:
            await hub.close()

    return asyncio.run(bootstrap())


def test_sigkill_loses_no_acknowledged_heartbeat(tmp_path: Path, database_url: str) -> None:
    port = _free_port()
    url = f"https://localhost:{port}"
    state = tmp_path / "state"
    token = _owner_token(state, port, database_url)
    proc = _start(state, port, database_url)
    try:
        ca = state / "tls" / "ca.crt"
        _wait_ready(url, ca, proc)
        running = _External(url, str(ca))
        clusters = [connected(running, f"kill-{i}", token) for i in range(3)]  # type: ignore[arg-type]
        acked = {c.resource_id: c.heartbeat().json()["lastConnectivityTime"] for c in clusters}
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = _start(state, port, database_url)
        _wait_ready(url, ca, proc)
        with running.client(token) as c:
            for cluster in clusters:
                props = c.get(cluster.resource_id).json()["properties"]
                assert props["lastConnectivityTime"].replace("Z", "+00:00") == acked[cluster.resource_id]
        assert clusters[0].heartbeat().status_code == 200
    finally:
        proc.kill()
        proc.wait(10)


def test_ctrl_c_stops_a_busy_hub_without_a_traceback(tmp_path: Path, database_url: str) -> None:
    """SIGINT, as Ctrl-C sends it, while agents use the database: the relay drains, the API stops,
    the pool closes, exit 0 and nothing on stderr that looks like a crash."""
    port = _free_port()
    state = tmp_path / "state"
    token = _owner_token(state, port, database_url)
    proc = _start(state, port, database_url, relay_port=_free_port())
    try:
        _wait_ready(f"https://localhost:{port}", state / "tls" / "ca.crt", proc)
        running = _External(f"https://localhost:{port}", str(state / "tls" / "ca.crt"))
        clusters = [connected(running, f"ctrl-c-{i}", token) for i in range(3)]  # type: ignore[arg-type]
        assert all(c.heartbeat().status_code == 200 for c in clusters)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"Error" not in err, err.decode()


def test_ctrl_c_while_the_database_does_not_answer_stops_the_hub_at_once(tmp_path: Path) -> None:
    """A PostgreSQL address that accepts and never answers keeps the hub's start-up waiting (its
    driver's timeout is a minute); Ctrl-C ends the wait at once, and the hub with it."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(30)
        database = f"postgresql://kubearc@127.0.0.1:{silent.getsockname()[1]}/hub"
        proc = _start(tmp_path / "state", _free_port(), database, relay_port=_free_port())
        try:
            connection, _ = silent.accept()  # the hub is connecting to its database now
            with connection:
                proc.send_signal(signal.SIGINT)
                _, err = proc.communicate(timeout=10)
        finally:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err, err.decode()


class _External:
    """The slice of RunningHub that tests.clusters needs, for a hub in another process."""

    def __init__(self, url: str, ca: str) -> None:
        self.url, self.ca = url, ca

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(
            base_url=self.url, verify=ssl.create_default_context(cafile=self.ca), headers=headers, timeout=30
        )

    def assign(self, principal_id: str, role: str, scope: str, principal_type: str = "User") -> None:
        raise NotImplementedError("the test passes a token that already has rights")
