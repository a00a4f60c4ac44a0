"""A hub restart, even a SIGKILL, loses no accepted heartbeat or resource."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from tests.clusters import connected, onboarder
from tests.conftest import RunningHub
from tests.hub_processes import External, free_port, hub_log, owner_token, start_hub, wait_ready


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


def test_sigkill_loses_no_acknowledged_heartbeat(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    url = f"https://localhost:{port}"
    state = tmp_path / "state"
    token = owner_token(state, port, database_url)
    proc = start_hub(state, port, database_url)
    try:
        ca = state / "tls" / "ca.crt"
        wait_ready(url, ca, proc)
        running = External(url, str(ca))
        clusters = [connected(running, f"kill-{i}", token) for i in range(3)]  # type: ignore[arg-type]
        acked = {c.resource_id: c.heartbeat().json()["lastConnectivityTime"] for c in clusters}
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = start_hub(state, port, database_url)
        wait_ready(url, ca, proc)
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
    port = free_port()
    state = tmp_path / "state"
    token = owner_token(state, port, database_url)
    proc = start_hub(state, port, database_url, relay_port=free_port())
    try:
        wait_ready(f"https://localhost:{port}", state / "tls" / "ca.crt", proc)
        running = External(f"https://localhost:{port}", str(state / "tls" / "ca.crt"))
        clusters = [connected(running, f"ctrl-c-{i}", token) for i in range(3)]  # type: ignore[arg-type]
        assert all(c.heartbeat().status_code == 200 for c in clusters)
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        proc.kill()
        proc.wait(10)
    err = hub_log(state, port)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Error" not in err, err


def test_ctrl_c_while_the_database_does_not_answer_stops_the_hub_at_once(tmp_path: Path) -> None:
    """A PostgreSQL address that accepts and never answers keeps the hub's start-up waiting (its
    driver's timeout is a minute); Ctrl-C ends the wait at once, and the hub with it."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(30)
        database = f"postgresql://kubearc@127.0.0.1:{silent.getsockname()[1]}/hub"
        state, port = tmp_path / "state", free_port()
        proc = start_hub(state, port, database, relay_port=free_port())
        try:
            connection, _ = silent.accept()  # the hub is connecting to its database now
            with connection:
                proc.send_signal(signal.SIGINT)
                proc.wait(10)
        finally:
            proc.kill()
            proc.wait(10)
    err = hub_log(state, port)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
