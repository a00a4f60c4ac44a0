"""Heartbeats written in batches: one transaction for every heartbeat of the last few milliseconds.

A fleet of 100,000 clusters heartbeats hundreds of times a second, and thousands in
the minute after a relay or network comes back. One transaction per heartbeat spends
most of the hub's CPU on the statement round trips, not on the heartbeat, so the
writer gathers the heartbeats that arrive within `linger` seconds (5 ms, or while
the previous batch is being written) and writes them together:

- one UPDATE that stamps every cluster whose certificate is on record and not revoked
  with the batch's time, RETURNING what each answer needs (a revoked certificate gets
  its 401 here, as before; SQLite, which cannot return the certificate's columns,
  selects the live serials first),

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
from sqlalchemy.ext.asyncio import AsyncConnection

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
        self, hub: Hub, registry: CollectorRegistry, linger: float = 0.005, max_batch: int = 500
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
                    future.set_exception(SHUTTING_DOWN)

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
        """One transaction: the stamp on the clusters whose certificates are live."""
        wanted = list(dict.fromkeys(serials))
        now = self.hub.now()
        if self.hub.engine.dialect.name == "postgresql":
            # One statement, so no BEGIN and COMMIT round trips: in autocommit it is atomic, and
            # durable when PostgreSQL answers it.
            async with self.hub.engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                return await _write_postgres(conn, wanted, now)
        async with self.hub.engine.begin() as conn:
            return await _write_portable(conn, wanted, now)


async def _write_postgres(conn: AsyncConnection, wanted: list[str], now: dt.datetime) -> dict[str, Result]:
    """One UPDATE ... FROM the certificates, RETURNING each serial's cluster: one prepared
    statement whatever the batch size (the serials go as one array)."""
    live = IdentityCertificate.serial == any_(bindparam("serials", wanted, type_=postgresql.ARRAY(String)))
    stamp = (
        update(Cluster)
        .where(Cluster.id == IdentityCertificate.cluster_id, live, IdentityCertificate.revoked_at.is_(None))
        .values(last_connectivity_time=now)
        .returning(IdentityCertificate.serial, Cluster.id, Cluster.created_at, Cluster.identity_expires_at)
    )
    rows = (await conn.execute(stamp)).all()
    written: dict[str, Result] = {
        serial: Stamped(created, now, expires) for serial, _, created, expires in rows
    }
    missing = [serial for serial in wanted if serial not in written]
    if missing and rows:
        # Two live certificates of one cluster in one batch (a renewal under way): the row was
        # updated once and returned for one of them; the other shares its stamp.
        by_cluster = {cid: Stamped(created, now, expires) for _, cid, created, expires in rows}
        owners = select(IdentityCertificate.serial, IdentityCertificate.cluster_id).where(
            IdentityCertificate.serial == any_(bindparam("missing", missing, type_=postgresql.ARRAY(String))),
            IdentityCertificate.revoked_at.is_(None),
        )
        for serial, cid in (await conn.execute(owners)).all():
            if cid in by_cluster:
                written[serial] = by_cluster[cid]
    return written


async def _write_portable(conn: AsyncConnection, wanted: list[str], now: dt.datetime) -> dict[str, Result]:
    """SQLite: which serials are live, then one UPDATE of their clusters."""
    owners = select(IdentityCertificate.serial, IdentityCertificate.cluster_id).where(
        IdentityCertificate.serial.in_(wanted), IdentityCertificate.revoked_at.is_(None)
    )
    owner_of = {serial: cluster for serial, cluster in (await conn.execute(owners)).all()}
    if not owner_of:
        return {}
    stamp = (
        update(Cluster)
        .where(Cluster.id.in_(sorted(set(owner_of.values()))))
        .values(last_connectivity_time=now)
        .returning(Cluster.id, Cluster.created_at, Cluster.identity_expires_at)
    )
    stamped = {
        cid: Stamped(created, now, expires) for cid, created, expires in (await conn.execute(stamp)).all()
    }
    return {serial: stamped.get(cluster) for serial, cluster in owner_of.items()}
