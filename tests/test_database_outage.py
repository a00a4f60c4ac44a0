"""PostgreSQL restarts under heartbeat load: 503 with Retry-After meanwhile, nothing accepted is lost.

A real `kubearc hub` process on a PostgreSQL of the test's own (so it can be
stopped), agents heartbeating the way agents do (retrying until the hub has
them); the database goes down as in a crash or a failover (an immediate stop:
every connection cut at once) and comes back through crash recovery.
"""

from __future__ import annotations

from pathlib import Path

from tests.clusters import connected
from tests.hub_processes import (
    External,
    eventually,
    free_port,
    heartbeating_agents,
    last_answers_are_stored,
    owner_token,
    start_hub,
    wait_ready,
)
from tests.private_postgres import private_postgres


def test_a_postgresql_restart_is_503_with_retry_after_and_loses_no_accepted_heartbeat(tmp_path: Path) -> None:
    with private_postgres() as pg:
        state, port = tmp_path / "hub", free_port()
        url, ca = f"https://localhost:{port}", state / "tls" / "ca.crt"
        owner = owner_token(state, port, pg.url)
        proc = start_hub(state, port, pg.url)
        try:
            wait_ready(url, ca, proc)
            hub = External(url, str(ca))
            clusters = [connected(hub, f"outage-{i}", owner) for i in range(4)]  # type: ignore[arg-type]
            with heartbeating_agents(clusters, str(ca)) as beats:
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
                last_answers_are_stored(c, clusters, beats)  # type: ignore[arg-type]
        finally:
            restarted.terminate()
            restarted.wait(30)
