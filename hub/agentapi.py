"""What cluster agents push (heartbeat, metadata, usage, logs) and pull (upgrades, configurations).

Every route authenticates the caller's identity certificate and acts only on that
certificate's own cluster: there is no cluster id in these paths to get wrong.
Every push is committed before the hub answers, so an acknowledged push survives
a hub restart and an unacknowledged one is retried by the agent.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select, update
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from foundation import pki
from foundation.wire import AGENT_WHOAMI_PATH
from hub.auth import Principal, agent_token_serial, current_agent, revoked
from hub.context import Hub, hub_of
from hub.errors import bad_request, not_found, read_model
from hub.heartbeats import HeartbeatWriter
from hub.status import connectivity_status
from hub.store.models import AgentLog, AgentUsage, AgentUsageSample, Cluster, IdentityCertificate
from hub.store.queries import configuration_named, configurations_of, purge_telemetry

MAX_LOG_ENTRIES = 1000
MAX_LOG_MESSAGE = 16_384


class Metadata(BaseModel):
    model_config = ConfigDict(extra="ignore")
    kubernetesVersion: str | None = Field(None, max_length=64)
    totalNodeCount: int | None = Field(None, ge=0, le=1_000_000)
    totalCoreCount: int | None = Field(None, ge=0, le=100_000_000)
    agentVersion: str | None = Field(None, max_length=64)
    clusterCertificateAuthority: str | None = Field(None, max_length=65_536)
    apiserverServerName: str | None = Field(None, max_length=253)

    @field_validator("clusterCertificateAuthority")
    @classmethod
    def _pem(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                pki.load_cert(value.encode())
            except ValueError as exc:
                raise ValueError(f"not a PEM certificate: {exc}") from None
        return value


class AgentUsageItem(BaseModel):
    name: str = Field(min_length=1, max_length=63)
    cpuMillicores: int = Field(ge=0)
    memoryBytes: int = Field(ge=0)


class UsageReport(BaseModel):
    agents: list[AgentUsageItem] = Field(max_length=64)


class LogEntry(BaseModel):
    agent: str = Field(min_length=1, max_length=63)
    timestamp: dt.datetime | None = None
    level: str = Field("info", max_length=16)
    message: str = Field(max_length=MAX_LOG_MESSAGE)

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("timestamp needs a timezone (e.g. 2026-01-01T00:00:00Z)")
        return value


class LogBatch(BaseModel):
    entries: list[LogEntry] = Field(max_length=MAX_LOG_ENTRIES)


class ComplianceReport(BaseModel):
    complianceState: str = Field(pattern="^(Pending|Compliant|Noncompliant|Installed|Failed)$")
    message: str | None = Field(None, max_length=4096)


def _status(
    hub: Hub, created_at: dt.datetime, last: dt.datetime | None, expires: dt.datetime | None
) -> dict[str, Any]:
    status = connectivity_status(
        created_at=created_at,
        last_heartbeat=last,
        identity_expires_at=expires,
        now=hub.now(),
        thresholds=hub.config.status,
    )
    return {"connectivityStatus": status.value, "lastConnectivityTime": last.isoformat() if last else None}


async def _touch(hub: Hub, serial: str, **values: Any) -> dict[str, Any]:
    """Stamp the heartbeat (and `values`) on the cluster whose unrevoked certificate is `serial`.

    One statement does the revocation check and the write, committed before we answer
    (metadata pushes; heartbeats go in batches, `hub.heartbeats`).
    """
    owner = (
        select(IdentityCertificate.cluster_id)
        .where(IdentityCertificate.serial == serial, IdentityCertificate.revoked_at.is_(None))
        .scalar_subquery()
    )
    stmt = (
        update(Cluster)
        .where(Cluster.id == owner)
        .values(last_connectivity_time=hub.now(), **values)
        .returning(Cluster.created_at, Cluster.last_connectivity_time, Cluster.identity_expires_at)
    )
    async with hub.engine.begin() as conn:
        row = (await conn.execute(stmt)).first()
    if row is None:
        raise revoked()
    return _status(hub, *row)


def _own(agent: Principal) -> int:
    """The caller's cluster: `current_agent` only returns principals bound to one."""
    assert agent.cluster_id is not None
    return agent.cluster_id


async def heartbeat(request: Request) -> Response:
    """Stamped in a batch with the heartbeats of the same moments (`hub.heartbeats`), durably."""
    hub = hub_of(request)
    writer: HeartbeatWriter = request.app.state.heartbeats
    stamped = await writer.beat(agent_token_serial(request))
    if stamped is None:
        raise revoked()
    return JSONResponse(
        _status(hub, stamped.created_at, stamped.last_connectivity_time, stamped.identity_expires_at)
    )


async def metadata(request: Request) -> Response:
    hub, serial = hub_of(request), agent_token_serial(request)
    body = await read_model(request, Metadata)
    columns = {
        "kubernetes_version": body.kubernetesVersion,
        "total_node_count": body.totalNodeCount,
        "total_core_count": body.totalCoreCount,
        "agent_version": body.agentVersion,
        "cluster_ca": body.clusterCertificateAuthority,
        "apiserver_server_name": body.apiserverServerName,
    }
    values = {k: v for k, v in columns.items() if v is not None}
    status = await _touch(hub, serial, metadata_updated_at=hub.now(), **values)
    return JSONResponse({**body.model_dump(exclude_none=True), **status})


async def usage(request: Request) -> Response:
    hub, agent = hub_of(request), await current_agent(request)
    body = await read_model(request, UsageReport)
    now = hub.now()
    async with hub.sessions() as session:
        for item in body.agents:
            values = {"cpu_millicores": item.cpuMillicores, "memory_bytes": item.memoryBytes}
            await session.merge(
                AgentUsage(cluster_id=agent.cluster_id, agent=item.name, reported_at=now, **values)
            )
            session.add(AgentUsageSample(cluster_id=agent.cluster_id, agent=item.name, ts=now, **values))
        await purge_telemetry(session, _own(agent), now - hub.config.telemetry_retention)
        await session.commit()
    return JSONResponse({"accepted": len(body.agents)})


async def logs(request: Request) -> Response:
    hub, agent = hub_of(request), await current_agent(request)
    body = await read_model(request, LogBatch)
    now = hub.now()
    async with hub.sessions() as session:
        session.add_all(
            [
                AgentLog(
                    cluster_id=agent.cluster_id,
                    agent=e.agent,
                    ts=e.timestamp or now,
                    level={"warn": "warning", "fatal": "critical"}.get(e.level.lower(), e.level.lower()),
                    message=e.message,
                )
                for e in body.entries
            ]
        )
        await purge_telemetry(session, _own(agent), now - hub.config.telemetry_retention)
        await session.commit()
    return JSONResponse({"accepted": len(body.entries)})


def _version(value: str | None) -> tuple[int, ...]:
    parts = []
    for piece in (value or "0").lstrip("v").split("-")[0].split("."):
        parts.append(int(piece) if piece.isdigit() else 0)
    return tuple(parts)


async def upgrade(request: Request) -> Response:
    hub, agent = hub_of(request), await current_agent(request)
    async with hub.sessions() as session:
        cluster = await session.get(Cluster, agent.cluster_id)
    if cluster is None:
        raise not_found("connected cluster")
    latest = hub.config.latest_agent_version
    return JSONResponse(
        {
            "currentVersion": cluster.agent_version,
            "latestVersion": latest,
            "upgradeAvailable": _version(latest) > _version(cluster.agent_version),
            "autoUpgrade": cluster.auto_upgrade,
        }
    )


async def configurations(request: Request) -> Response:
    """The cluster's GitOps configurations, protected settings included (agents only)."""
    hub, agent = hub_of(request), await current_agent(request)
    async with hub.sessions() as session:
        rows = await configurations_of(session, _own(agent))
    value = []
    for c in rows:
        protected = json.loads(hub.box.open(c.protected_settings)) if c.protected_settings else {}
        value.append(
            {
                "name": c.name,
                "repositoryUrl": c.repository_url,
                "operatorNamespace": c.operator_namespace,
                "operatorInstanceName": c.operator_instance_name,
                "operatorType": c.operator_type,
                "operatorScope": c.operator_scope,
                "operatorParams": c.operator_params,
                "sshKnownHostsContents": c.ssh_known_hosts,
                "configurationProtectedSettings": protected,
            }
        )
    return JSONResponse({"value": value})


async def configuration_status(request: Request) -> Response:
    hub, agent = hub_of(request), await current_agent(request)
    body = await read_model(request, ComplianceReport)
    name = request.path_params["name"]
    async with hub.sessions() as session:
        row = await configuration_named(session, _own(agent), name)
        if row is None:
            raise not_found(f"configuration '{name}'")
        row.compliance_state = body.complianceState
        row.compliance_message = body.message
        row.updated_at = hub.now()
        await session.commit()
    return JSONResponse({"name": name, "complianceState": body.complianceState})


async def latest_log(request: Request) -> Response:
    """When the newest line the hub holds from `agent` (of the caller's cluster) was logged: where a
    log shipper that restarted carries on, without sending a line twice."""
    hub, agent = hub_of(request), await current_agent(request)
    name = request.query_params.get("agent", "")
    if not name:
        raise bad_request("agent: the agent whose newest line to find")
    query = select(func.max(AgentLog.ts)).where(AgentLog.cluster_id == _own(agent), AgentLog.agent == name)
    async with hub.sessions() as session:
        newest = (await session.execute(query)).scalar_one_or_none()
    return JSONResponse(
        {"agent": name, "timestamp": newest.isoformat().replace("+00:00", "Z") if newest else None}
    )


async def whoami(request: Request) -> Response:
    agent = await current_agent(request)
    return JSONResponse({"resourceId": agent.object_id, "certificateSerial": agent.cert_serial})


routes = [
    Route("/agent/v1/heartbeat", heartbeat, methods=["POST"]),
    Route("/agent/v1/metadata", metadata, methods=["PUT"]),
    Route("/agent/v1/usage", usage, methods=["PUT"]),
    Route("/agent/v1/logs", logs, methods=["POST"]),
    Route("/agent/v1/logs/latest", latest_log, methods=["GET"]),
    Route("/agent/v1/upgrade", upgrade, methods=["GET"]),
    Route("/agent/v1/configurations", configurations, methods=["GET"]),
    Route("/agent/v1/configurations/{name}/status", configuration_status, methods=["PUT"]),
    Route(AGENT_WHOAMI_PATH, whoami, methods=["GET"]),
]
