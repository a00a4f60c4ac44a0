"""What a cluster's agents pushed, read back by users: their log lines and their CPU and memory.

- `GET .../connectedClusters/{name}/agentLogs?agent=&level=&since=&until=&$top=` pages
  through log lines oldest first (filters: agent, least level, time range); a
  `nextLink` carries on after the last line returned.
- `GET .../connectedClusters/{name}/agentUsage` is each agent's latest reading;
  `GET .../agentUsage/{agent}?since=` its time series.

Both are kept for `--log-retention` (default 7 days): older rows are dropped when
the cluster next pushes. Reading needs `.../connectedClusters/agentLogs/read` or
`.../agentUsage/read` (Reader and Owner have them; the Arc data-plane roles do not).
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import and_, or_, select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub.auth import current_user
from hub.context import hub_of
from hub.errors import bad_request
from hub.rbac.access import require
from hub.resources import CC, CLUSTER_TYPE, arm_time, cluster_id, validate_names
from hub.store.models import AgentLog, AgentUsage, AgentUsageSample
from hub.store.queries import find_cluster

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
MAX_PAGE = 1000
DEFAULT_PAGE = 200


def _time(request: Request, name: str, default: dt.datetime | None = None) -> dt.datetime | None:
    """A time from the query: ISO 8601 with a zone, or an age like `15m` / `2h` / `7d` before now."""
    text = request.query_params.get(name)
    if not text:
        return default
    from foundation.settings import parse_duration

    try:
        return hub_of(request).now() - dt.timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(
            f"{name}: {text!r} is neither a time (2026-12-01T10:00:00Z) nor an age (15m)"
        ) from None
    if value.tzinfo is None:
        raise bad_request(f"{name}: {text!r} needs a time zone (e.g. a trailing Z)")
    return value


def _top(request: Request) -> int:
    text = request.query_params.get("$top", str(DEFAULT_PAGE))
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise bad_request(f"$top: a whole number from 1 to {MAX_PAGE}, not {text!r}")
    return int(text)


async def _cluster(request: Request, action: str) -> int:
    hub, principal = hub_of(request), await current_user(request)
    p = request.path_params
    validate_names(p["sub"], p["rg"], p["name"])
    rid = cluster_id(p["sub"], p["rg"], p["name"])
    await require(hub, principal, action, rid)
    async with hub.sessions() as session:
        return (await find_cluster(session, rid)).id


async def agent_logs(request: Request) -> Response:
    cluster = await _cluster(request, f"{CLUSTER_TYPE}/agentLogs/read")
    q = request.query_params
    level = q.get("level", "debug").lower()
    if level not in LEVELS:
        raise bad_request(f"level: one of {', '.join(LEVELS)}, not {level!r}")
    since, until, top = _time(request, "since"), _time(request, "until"), _top(request)
    query = select(AgentLog).where(AgentLog.cluster_id == cluster)
    if q.get("agent"):
        query = query.where(AgentLog.agent == q["agent"])
    wanted = [name for name, n in LEVELS.items() if n >= LEVELS[level]]
    if level != "debug":
        query = query.where(AgentLog.level.in_(wanted))
    if since:
        query = query.where(AgentLog.ts >= since)
    if until:
        query = query.where(AgentLog.ts < until)
    if token := q.get("$skipToken"):
        stamp, _, last = token.rpartition("|")
        try:
            after, last_id = dt.datetime.fromisoformat(stamp), int(last)
        except ValueError:
            raise bad_request("$skipToken: not one this API handed out") from None
        query = query.where(or_(AgentLog.ts > after, and_(AgentLog.ts == after, AgentLog.id > last_id)))
    async with hub_of(request).sessions() as session:
        rows = (
            (await session.execute(query.order_by(AgentLog.ts, AgentLog.id).limit(top + 1))).scalars().all()
        )
    page, more = rows[:top], len(rows) > top
    body: dict[str, Any] = {
        "value": [
            {"agent": r.agent, "timestamp": arm_time(r.ts), "level": r.level, "message": r.message}
            for r in page
        ]
    }
    if more:
        params = dict(q) | {"$skipToken": f"{page[-1].ts.isoformat()}|{page[-1].id}"}
        body["nextLink"] = f"{request.url.replace(query='')}?{urlencode(params)}"
    return JSONResponse(body)


async def agent_usage(request: Request) -> Response:
    cluster = await _cluster(request, f"{CLUSTER_TYPE}/agentUsage/read")
    async with hub_of(request).sessions() as session:
        rows = (
            (
                await session.execute(
                    select(AgentUsage).where(AgentUsage.cluster_id == cluster).order_by(AgentUsage.agent)
                )
            )
            .scalars()
            .all()
        )
    return JSONResponse(
        {
            "value": [
                {
                    "agent": r.agent,
                    "cpuMillicores": r.cpu_millicores,
                    "memoryBytes": r.memory_bytes,
                    "reportedAt": arm_time(r.reported_at),
                }
                for r in rows
            ]
        }
    )


async def agent_usage_series(request: Request) -> Response:
    cluster = await _cluster(request, f"{CLUSTER_TYPE}/agentUsage/read")
    agent = request.path_params["agent"]
    since = _time(request, "since", hub_of(request).now() - dt.timedelta(days=1))
    query = (
        select(AgentUsageSample)
        .where(
            AgentUsageSample.cluster_id == cluster,
            AgentUsageSample.agent == agent,
            AgentUsageSample.ts >= since,
        )
        .order_by(AgentUsageSample.ts, AgentUsageSample.id)
        .limit(10_000)
    )
    async with hub_of(request).sessions() as session:
        rows = (await session.execute(query)).scalars().all()
    points = [
        {"timestamp": arm_time(r.ts), "cpuMillicores": r.cpu_millicores, "memoryBytes": r.memory_bytes}
        for r in rows
    ]
    return JSONResponse({"agent": agent, "value": points})


routes = [
    Route(CC + "/{name}/agentLogs", agent_logs, methods=["GET"]),
    Route(CC + "/{name}/agentUsage", agent_usage, methods=["GET"]),
    Route(CC + "/{name}/agentUsage/{agent}", agent_usage_series, methods=["GET"]),
]
