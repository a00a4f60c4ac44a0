"""Lookups that more than one API module needs: a cluster by resource id, its configurations.

They live in the store layer, next to the models they read, so that route
modules share them without importing one another (`hub.clusters`,
`hub.configurations` and `hub.agentapi` all find clusters and configurations).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.errors import not_found
from hub.resources import scope_key
from hub.store.models import AgentLog, AgentUsageSample, Cluster, Configuration


async def cluster_at(session: AsyncSession, resource_id: str) -> Cluster | None:
    """The connected cluster with this resource id (compared case-insensitively), if any."""
    query = select(Cluster).where(Cluster.resource_key == scope_key(resource_id))
    return (await session.execute(query)).scalar_one_or_none()


async def find_cluster(session: AsyncSession, resource_id: str) -> Cluster:
    """The connected cluster with this resource id; a 404 if there is none."""
    cluster = await cluster_at(session, resource_id)
    if cluster is None:
        raise not_found(f"connected cluster '{resource_id}'")
    return cluster


async def configurations_of(session: AsyncSession, cluster_id: int) -> Sequence[Configuration]:
    query = select(Configuration).where(Configuration.cluster_id == cluster_id).order_by(Configuration.name)
    return (await session.execute(query)).scalars().all()


async def configuration_named(session: AsyncSession, cluster_id: int, name: str) -> Configuration | None:
    query = select(Configuration).where(Configuration.cluster_id == cluster_id, Configuration.name == name)
    return (await session.execute(query)).scalar_one_or_none()


async def purge_telemetry(session: AsyncSession, cluster_id: int, before: dt.datetime) -> None:
    """Drop one cluster's log lines and usage samples older than `before` (the retention)."""
    await session.execute(delete(AgentLog).where(AgentLog.cluster_id == cluster_id, AgentLog.ts < before))
    await session.execute(
        delete(AgentUsageSample).where(
            AgentUsageSample.cluster_id == cluster_id, AgentUsageSample.ts < before
        )
    )
