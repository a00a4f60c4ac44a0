"""Heartbeats written in batches: one transaction for every heartbeat of the last few milliseconds.

A fleet of 100,000 clusters heartbeats hundreds of times a second, and thousands in
the minute after a relay or network comes back. One transaction per heartbeat spends
most of the hub's CPU on the statement round trips, not on the heartbeat, so the
writer gathers the heartbeats that arrive within `linger` seconds (or while the
previous batch is being written) and writes them together:

- one SELECT that keeps the serials whose certificate is on record and not revoked
  (a revoked certificate gets its 401 here, as before),
- one UPDATE that stamps every owning cluster with the batch's time, RETURNING what
  each answer needs,

committed before any heartbeat of the batch is answered. A heartbeat is acknowledged
only once it is durable, and one whose batch fails gets the error (the agent retries).
The writer is one task, owned by the hub's server for as long as it serves.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram
from sqlalchemy import String, any_, bindparam, select, update
from sqlalchemy.dialects import postgresql

from hub.context import Hub
from hub.errors import ApiError
from hub.store.models import Cluster, IdentityCertificate

log = logging.getLogger("kubearc.hub")


@dataclass(frozen=True)
class Stamped:
    """What a heartbeat's answer is made of."""

    created_at: dt.datetime
    last_connectivity_time: dt.datetime
    identity_expires_at: dt.datetime | None


Result = Stamped | None  # None: the certificate is revoked or unknown
SHUTTING_DOWN = ApiError(503, "ServiceUnavailable", "the hub is shutting down; retry")


class HeartbeatWriter:
    def __init__(
        self, hub: Hub, registry: CollectorRegistry, linger: float = 0.002, max_batch: int = 500
    ) -> None:
        self.hub = hub
        self.linger = linger
        self.max_batch = max_batch
        self._waiting: list[tuple[str, asyncio.Future[Result]]] = []
        self._wake = asyncio.Event()
        self._running = False
        self.sizes = Histogram(
            "kubearc_hub_heartbeat_batch_size",
            "Heartbeats per batch.",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500),
            registry=registry,
        )

    async def beat(self, serial: str) -> Result:
        """Stamp the heartbeat of the certificate `serial`, durably; None if it is revoked."""
        if not self._running:  # no writer (a hub served without one): a batch of one
            return (await self._write([serial])).get(serial)
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((serial, future))
        self._wake.set()
        return await future

    async def run(self) -> None:
        """Write batches until cancelled; heartbeats still waiting then fail (they were not written)."""
        self._running = True
        try:
            while True:
                await self._wake.wait()
                if len(self._waiting) < self.max_batch:
                    await asyncio.sleep(self.linger)  # let the heartbeats of the next moments join
                self._wake.clear()
                while self._waiting:
                    batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
                    await self._flush(batch)
        finally:
            self._running = False
            waiting, self._waiting = self._waiting, []
            for _, future in waiting:
                if not future.done():
                    future.set_exception(
                        ApiError(503, "ServiceUnavailable", "the hub is shutting down; retry")
                    )

    async def _flush(self, batch: list[tuple[str, asyncio.Future[Result]]]) -> None:
        try:
            written = await self._write([serial for serial, _ in batch])
        except Exception as exc:  # the database: every heartbeat of the batch gets the error
            log.warning("heartbeat batch failed", extra={"heartbeats": len(batch), "error": str(exc)})
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        self.sizes.observe(len(batch))
        for serial, future in batch:
            if not future.done():  # its request may have gone away meanwhile
                future.set_result(written.get(serial))

    async def _write(self, serials: list[str]) -> dict[str, Result]:
        """One transaction: which serials are live, and the stamp on their clusters."""
        wanted = list(dict.fromkeys(serials))
        now = self.hub.now()
        postgres = self.hub.engine.dialect.name == "postgresql"
        if postgres:  # one prepared statement whatever the batch size
            serials_param = bindparam("serials", wanted, type_=postgresql.ARRAY(String))
            listed = IdentityCertificate.serial == any_(serials_param)
        else:
            listed = IdentityCertificate.serial.in_(wanted)
        owners = select(IdentityCertificate.serial, IdentityCertificate.cluster_id).where(
            listed, IdentityCertificate.revoked_at.is_(None)
        )
        async with self.hub.engine.begin() as conn:
            owner_of = {serial: cluster for serial, cluster in (await conn.execute(owners)).all()}
            ids = sorted(set(owner_of.values()))
            if not ids:
                return {}
            if postgres:
                chosen = Cluster.id == any_(bindparam("ids", ids, type_=postgresql.ARRAY(Cluster.id.type)))
            else:
                chosen = Cluster.id.in_(ids)
            stamp = (
                update(Cluster)
                .where(chosen)
                .values(last_connectivity_time=now)
                .returning(Cluster.id, Cluster.created_at, Cluster.identity_expires_at)
            )
            rows = (await conn.execute(stamp)).all()
        stamped = {cid: Stamped(created, now, expires) for cid, created, expires in rows}
        return {serial: stamped.get(cluster) for serial, cluster in owner_of.items()}
