"""`kubearc hub` as a real process: start it, wait for it, hand tests a client and a token,
and heartbeat it the way agents do.

Shared by the durability tests (one hub killed and restarted), the replica tests (two
hubs on one PostgreSQL behind a load balancer) and the database outage test.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from foundation import tokens
from hub.config import HubConfig
from hub.context import open_hub
from hub.issuer.tokens import issue_access_token
from hub.rbac.assignments import create_assignment
from tests.clusters import SUB, ConnectedCluster
from tests.tunnel_stack import free_port

__all__ = [
    "Beats",
    "External",
    "eventually",
    "free_port",
    "heartbeating_agents",
    "hub_log",
    "last_answers_are_stored",
    "owner_token",
    "start_hub",
    "wait_ready",
]


def start_hub(
    state: Path,
    port: int,
    database_url: str,
    relay_port: int | None = None,
    public_url: str | None = None,
) -> subprocess.Popen[bytes]:
    """`kubearc hub` in its own process; its relay too when given a port."""
    relay = ["--relay-port", str(relay_port)] if relay_port else ["--no-relay"]
    public = ["--public-url", public_url] if public_url else []
    # Its log goes to a file: a pipe nobody reads fills up and blocks the hub mid-test.
    state.mkdir(parents=True, exist_ok=True)
    with (state.parent / f"{state.name}-{port}.log").open("ab") as log:
        return _popen(relay, public, state, port, database_url, log)


def _popen(
    relay: list[str], public: list[str], state: Path, port: int, database_url: str, log: IO[bytes]
) -> subprocess.Popen[bytes]:
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
            *public,
            "--database-url",
            database_url,
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def hub_log(state: Path, port: int) -> str:
    path = state.parent / f"{state.name}-{port}.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def wait_ready(url: str, ca: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"hub exited ({proc.returncode}); see its log beside its state directory"
        if ca.exists():
            try:
                if httpx.get(f"{url}/healthz", verify=ssl.create_default_context(cafile=str(ca))).is_success:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    raise TimeoutError("hub did not become ready")


def owner_token(state: Path, port: int, database_url: str, public_url: str | None = None) -> str:
    """A token of a new Owner of the test subscription, made in the hub's state before it starts."""
    user = str(uuid.uuid4())

    async def bootstrap() -> str:
        config = HubConfig(state_dir=state, port=port, database_url=database_url, public_url=public_url)
        hub = await open_hub(config)
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


class External:
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


@dataclass
class Beats:
    """What one agent's heartbeats got."""

    accepted: list[dt.datetime] = field(default_factory=list)  # lastConnectivityTime of each 200
    codes: Counter[int | str] = field(default_factory=Counter)  # statuses, and transport errors by name
    retry_after: set[str | None] = field(default_factory=set)  # of the 503s


def _heartbeating(cluster: ConnectedCluster, ca: str, stop: threading.Event, out: Beats) -> None:
    """Heartbeat as an agent does, with a fresh token each time, until `stop`; retry on any error."""
    assert cluster.identity is not None
    verify = ssl.create_default_context(cafile=ca)
    with httpx.Client(base_url=cluster.hub.url, verify=verify, timeout=15) as c:
        while not stop.is_set():
            token = tokens.make_agent_token(cluster.identity, cluster.hub.url)
            try:
                r = c.post("/agent/v1/heartbeat", json={}, headers={"Authorization": f"Bearer {token}"})
            except httpx.HTTPError as exc:
                out.codes[type(exc).__name__] += 1
                time.sleep(0.1)
                continue
            out.codes[r.status_code] += 1
            if r.status_code == 200:
                out.accepted.append(dt.datetime.fromisoformat(r.json()["lastConnectivityTime"]))
            elif r.status_code == 503:
                out.retry_after.add(r.headers.get("retry-after"))
                time.sleep(0.2)  # an agent waits Retry-After; the test probes more often
            time.sleep(0.02)


@contextlib.contextmanager
def heartbeating_agents(clusters: list[ConnectedCluster], ca: str) -> Iterator[dict[str, Beats]]:
    """One agent thread per cluster, each on its own kept-alive connection; stopped on exit."""
    stop = threading.Event()
    beats = {c.resource_id: Beats() for c in clusters}
    threads = [
        threading.Thread(target=_heartbeating, args=(c, ca, stop, beats[c.resource_id])) for c in clusters
    ]
    for thread in threads:
        thread.start()
    try:
        yield beats
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def last_answers_are_stored(
    client: httpx.Client, clusters: list[ConnectedCluster], beats: dict[str, Beats]
) -> None:
    """Nothing accepted is lost: each cluster is Connected, and its stored time is the last one
    its agent was answered with."""
    for cluster in clusters:
        props = client.get(cluster.resource_id, params={"api-version": "2024-01-01"}).json()["properties"]
        assert props["connectivityStatus"] == "Connected"
        stored = dt.datetime.fromisoformat(props["lastConnectivityTime"])
        assert stored == max(beats[cluster.resource_id].accepted)


def eventually(
    predicate: Callable[[], bool], what: str, seen: Callable[[], str] = lambda: "", within: float = 30
) -> None:
    """Wait for `predicate`; the failure names `what` and what `seen` says was seen meanwhile."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what} {seen()}"
        time.sleep(0.1)
