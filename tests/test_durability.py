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


def _start(state: Path, port: int, database_url: str) -> subprocess.Popen[bytes]:
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
            "--no-relay",
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


def test_sigkill_loses_no_acknowledged_heartbeat(tmp_path: Path, database_url: str) -> None:
    port = _free_port()
    url = f"https://localhost:{port}"
    state = tmp_path / "state"
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

    token = asyncio.run(bootstrap())
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
