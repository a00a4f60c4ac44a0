"""PostgreSQL restarts under heartbeat load: 503 with Retry-After meanwhile, nothing accepted is lost.

A real `kubearc hub` process on a PostgreSQL of the test's own (so it can be
stopped), agents heartbeating the way agents do (retrying until the hub has
them); the database goes down as in a crash or a failover (an immediate stop:
every connection cut at once) and comes back through crash recovery.
"""

from __future__ import annotations

import datetime as dt
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from foundation import tokens
from tests.clusters import ConnectedCluster, connected
from tests.hub_processes import External, free_port, owner_token, start_hub, wait_ready
from tests.private_postgres import private_postgres


@dataclass
class Beats:
    accepted: list[dt.datetime] = field(default_factory=list)  # lastConnectivityTime of each 200
    codes: Counter[int | str] = field(default_factory=Counter)
    retry_after: set[str | None] = field(default_factory=set)


def heartbeating(cluster: ConnectedCluster, ca: str, stop: threading.Event, out: Beats) -> None:
    assert cluster.identity is not None
    with httpx.Client(
        base_url=cluster.hub.url, verify=ssl.create_default_context(cafile=ca), timeout=15
    ) as c:
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


def eventually(
    predicate: Callable[[], bool], what: str, seen: Callable[[], str] = lambda: "", within: float = 30
) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what} {seen()}"
        time.sleep(0.1)


def test_a_postgresql_restart_is_503_with_retry_after_and_loses_no_accepted_heartbeat(tmp_path: Path) -> None:
    with private_postgres() as pg:
        state, port = tmp_path / "hub", free_port()
        url, ca = f"https://localhost:{port}", state / "tls" / "ca.crt"
        owner = owner_token(state, port, pg.url)
        proc = start_hub(state, port, pg.url)
        stop = threading.Event()
        threads: list[threading.Thread] = []
        try:
            wait_ready(url, ca, proc)
            hub = External(url, str(ca))
            clusters = [connected(hub, f"outage-{i}", owner) for i in range(4)]  # type: ignore[arg-type]
            beats = {c.resource_id: Beats() for c in clusters}
            for cluster in clusters:
                thread = threading.Thread(
                    target=heartbeating, args=(cluster, str(ca), stop, beats[cluster.resource_id])
                )
                thread.start()
                threads.append(thread)
            eventually(
                lambda: all(len(b.accepted) >= 5 for b in beats.values()), "heartbeats before the outage"
            )

            pg.stop()
            eventually(
                lambda: all(b.codes[503] >= 2 for b in beats.values()),
                "503s while the database is down",
                lambda: str({rid[-10:]: dict(b.codes) for rid, b in beats.items()}),
            )
            with hub.client(owner) as c:
                down = c.get(clusters[0].resource_id, params={"api-version": "2024-01-01"})
            assert down.status_code == 503 and down.headers["retry-after"] == "5"
            assert down.json()["error"]["code"] == "ServiceUnavailable"
            accepted_before = {rid: len(b.accepted) for rid, b in beats.items()}

            pg.start()  # the hub is not restarted: its pool opens fresh connections by itself
            eventually(
                lambda: all(len(b.accepted) >= accepted_before[rid] + 3 for rid, b in beats.items()),
                "heartbeats accepted again",
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
            assert proc.poll() is None, "the hub exited during the outage"
            proc.terminate()
            proc.wait(30)

        for rid, b in beats.items():
            assert 500 not in b.codes, f"{rid}: a 500 instead of a 503: {b.codes}"
            assert b.retry_after == {"5"}, b.retry_after
        # Nothing accepted is lost: each cluster's stored time is the last one it was answered with.
        restarted = start_hub(state, port, pg.url)
        try:
            wait_ready(url, ca, restarted)
            with hub.client(owner) as c:
                for cluster in clusters:
                    got = c.get(cluster.resource_id, params={"api-version": "2024-01-01"})
                    stored = dt.datetime.fromisoformat(got.json()["properties"]["lastConnectivityTime"])
                    assert stored == max(beats[cluster.resource_id].accepted)
        finally:
            restarted.terminate()
            restarted.wait(30)
