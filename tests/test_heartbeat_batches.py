"""Heartbeats arriving together are written as one batch, durably, and each still gets its own answer.

A real hub on real HTTPS (SQLite and PostgreSQL), agents with real identity
certificates and agent tokens; the batches are counted from the hub's /metrics.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from foundation import tokens
from hub.store.models import Cluster
from tests.clusters import SUB, ConnectedCluster, connected, onboarder
from tests.conftest import FakeClock, RunningHub


def batches(hub: RunningHub) -> tuple[float, float]:
    """(batches written, heartbeats in them) from the hub's /metrics."""
    with hub.client() as c:
        text = c.get("/metrics").text
    found = {"count": 0.0, "sum": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kubearc_hub_heartbeat_batch_size_count":
                found["count"] = sample.value
            elif sample.name == "kubearc_hub_heartbeat_batch_size_sum":
                found["sum"] = sample.value
    return found["count"], found["sum"]


async def beat_together(hub: RunningHub, clusters: list[ConnectedCluster]) -> list[httpx.Response]:
    """One heartbeat per cluster, all in flight at once, each on its own connection."""
    context = ssl.create_default_context(cafile=hub.ca)
    async with asyncio.TaskGroup() as tasks:
        calls = []
        for cluster in clusters:
            assert cluster.identity is not None
            token = tokens.make_agent_token(cluster.identity, hub.url)
            client = httpx.AsyncClient(
                base_url=hub.url, verify=context, headers={"Authorization": f"Bearer {token}"}
            )
            calls.append(tasks.create_task(_post(client)))
    return [call.result() for call in calls]


async def _post(client: httpx.AsyncClient) -> httpx.Response:
    async with client:
        await client.get("/healthz")  # the connection is up before the heartbeats start together
        return await client.post("/agent/v1/heartbeat", json={})


def stamps(hub: RunningHub, ids: list[str]) -> dict[str, dt.datetime | None]:
    async def read() -> dict[str, dt.datetime | None]:
        async with hub.hub.sessions() as session:
            rows = await session.execute(
                select(Cluster.resource_key, Cluster.last_connectivity_time).where(
                    Cluster.resource_key.in_(ids)
                )
            )
            return dict(rows.tuples().all())

    return hub.run(read())


def test_heartbeats_in_flight_together_share_batches_and_are_all_durable(hub: RunningHub) -> None:
    token = onboarder(hub)
    clusters = [connected(hub, f"batch-{i}", token) for i in range(40)]
    count0, sum0 = batches(hub)
    answers = asyncio.run(beat_together(hub, clusters))
    assert [r.status_code for r in answers] == [200] * 40, [r.text for r in answers if r.status_code != 200]
    assert {r.json()["connectivityStatus"] for r in answers} == {"Connected"}
    count, total = batches(hub)
    assert total - sum0 == 40  # every heartbeat went through a batch
    assert count - count0 < 40  # and some shared one
    written = stamps(hub, [c.resource_id.lower() for c in clusters])
    for cluster, answer in zip(clusters, answers, strict=True):
        stamped = written[cluster.resource_id.lower()]
        assert stamped is not None
        assert stamped.isoformat() == answer.json()["lastConnectivityTime"]  # what was answered is stored


def test_a_revoked_certificate_in_a_batch_is_refused_and_the_others_are_written(hub: RunningHub) -> None:
    token = onboarder(hub)
    clusters = [connected(hub, f"mixed-{i}", token) for i in range(12)]
    gone = clusters[5]
    assert gone.identity is not None
    owner = str(uuid.uuid4())
    hub.assign(owner, "Owner", f"/subscriptions/{SUB}")
    with hub.client(hub.token(owner)) as c:
        deleted = c.delete(gone.resource_id, params={"api-version": "2024-01-01"})
        assert deleted.status_code in (200, 202, 204), deleted.text
    answers = asyncio.run(beat_together(hub, clusters))
    codes = [r.status_code for r in answers]
    assert codes[5] == 401 and "revoked" in answers[5].json()["error"]["message"]
    assert codes[:5] + codes[6:] == [200] * 11


def test_the_old_and_the_renewed_certificate_of_one_cluster_in_one_batch_are_both_answered(
    hub: RunningHub, clock: FakeClock
) -> None:
    cluster = connected(hub, "renewing", onboarder(hub))
    before = ConnectedCluster(hub, cluster.resource_id, cluster.onboarding_key, cluster.identity)
    clock.advance(days=46)  # inside the renewal window; the old certificate stays valid meanwhile
    assert cluster.renew().status_code == 200
    assert before.identity is not None and cluster.identity is not None
    assert before.identity.cert.serial_number != cluster.identity.cert.serial_number
    for _ in range(3):  # the two land in one batch most of the time; every time, both are answered
        old, new = asyncio.run(beat_together(hub, [before, cluster]))
        assert (old.status_code, new.status_code) == (200, 200), (old.text, new.text)
        assert old.json()["connectivityStatus"] == new.json()["connectivityStatus"] == "Connected"
