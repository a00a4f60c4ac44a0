"""Flux configurations of a cluster: the users' ARM API and the config-agent's pull and report.

Users write a configuration's spec (`PUT .../fluxConfigurations/{name}`) and read
it back with the status the cluster reported; each write bumps the
configuration's `generation` and sets it `Creating`/`Updating` until the
cluster's config-agent reports that generation applied. The agent pulls every
configuration of its own cluster, protected settings included
(`GET /agent/v1/fluxConfigurations`), and reports each one's compliance
(`PUT /agent/v1/fluxConfigurations/{name}/status`); a report for an older
generation updates the statuses but not the provisioning state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub import fluxspec
from hub.auth import current_agent, current_user
from hub.context import Hub, hub_of
from hub.errors import bad_request, not_found, read_model
from hub.rbac.access import require
from hub.resources import CC, cluster_child
from hub.store.models import FluxConfiguration
from hub.store.queries import find_cluster

KIND = fluxspec.KIND


async def _rows(session: AsyncSession, cluster: int, name: str | None = None) -> Sequence[FluxConfiguration]:
    query = select(FluxConfiguration).where(FluxConfiguration.cluster_id == cluster)
    if name is not None:
        query = query.where(FluxConfiguration.name == name)
    return (await session.execute(query.order_by(FluxConfiguration.name))).scalars().all()


def _protected(hub: Hub, row: FluxConfiguration) -> dict[str, str]:
    return dict(hub.box.open_json(row.protected_settings))


def _arm(hub: Hub, rid: str, row: FluxConfiguration) -> dict[str, Any]:
    return fluxspec.to_arm(rid, row, sorted(_protected(hub, row)))


def _ids(request: Request) -> tuple[str, str]:
    return cluster_child(request.path_params, "config")


async def configuration_item(request: Request) -> Response:
    hub, principal = hub_of(request), await current_user(request)
    rid, name = _ids(request)
    verb = {"GET": "read", "PUT": "write", "DELETE": "delete"}[request.method]
    await require(hub, principal, f"{KIND}/{verb}", rid)
    if request.method == "PUT":
        if not fluxspec.valid_name(name):
            raise bad_request(
                f"invalid flux configuration name {name!r}: 1-30 lowercase letters, digits and '-', "
                "starting and ending with a letter or digit"
            )
        body = (await read_model(request, fluxspec.FluxBody)).properties
        return await _put(hub, rid, name, body)
    async with hub.sessions() as session:
        cluster = await find_cluster(session, rid)
        if request.method == "DELETE":
            result = await session.execute(
                delete(FluxConfiguration).where(
                    FluxConfiguration.cluster_id == cluster.id, FluxConfiguration.name == name
                )
            )
            await session.commit()
            return Response(status_code=200 if result.rowcount else 204)  # type: ignore[attr-defined]
        rows = await _rows(session, cluster.id, name)
        if not rows:
            raise not_found(f"flux configuration '{name}'")
        return JSONResponse(_arm(hub, rid, rows[0]))


async def _put(hub: Hub, rid: str, name: str, body: fluxspec.FluxSpec) -> Response:
    now = hub.now()
    async with hub.sessions() as session:
        cluster = await find_cluster(session, rid)
        rows = await _rows(session, cluster.id, name)
        row = rows[0] if rows else None
        created = row is None
        if row is None:
            row = FluxConfiguration(
                cluster_id=cluster.id,
                name=name,
                created_at=now,
                generation=0,
                observed_generation=0,
                statuses=[],
            )
            session.add(row)
        elif row.spec.get("scope") != body.scope or row.spec.get("namespace") != body.namespace:
            raise bad_request(
                "scope and namespace of a flux configuration cannot change; delete it and create it again"
            )
        try:
            settings = body.protected(_protected(hub, row) if not created else {})
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        row.spec = body.desired()
        row.protected_settings = hub.box.seal_json(settings)
        row.generation += 1
        row.provisioning_state = "Creating" if created else "Updating"
        row.compliance_state = "Suspended" if body.suspend else "Pending"
        row.updated_at = now
        await session.commit()
        return JSONResponse(_arm(hub, rid, row), status_code=201 if created else 200)


async def list_configurations(request: Request) -> Response:
    hub, principal = hub_of(request), await current_user(request)
    rid, _ = _ids(request)
    await require(hub, principal, f"{KIND}/read", rid)
    async with hub.sessions() as session:
        cluster = await find_cluster(session, rid)
        rows = await _rows(session, cluster.id)
    return JSONResponse({"value": [_arm(hub, rid, r) for r in rows]})


# ---------------------------------------------------------------- the cluster's config-agent


async def agent_configurations(request: Request) -> Response:
    """Every flux configuration of the caller's cluster, protected settings included (agents only)."""
    hub, agent = hub_of(request), await current_agent(request)
    assert agent.cluster_id is not None
    async with hub.sessions() as session:
        rows = await _rows(session, agent.cluster_id)
    return JSONResponse({"value": [fluxspec.to_agent(r, _protected(hub, r)) for r in rows]})


async def agent_status(request: Request) -> Response:
    hub, agent = hub_of(request), await current_agent(request)
    assert agent.cluster_id is not None
    report = await read_model(request, fluxspec.FluxStatus)
    name = request.path_params["name"]
    async with hub.sessions() as session:
        rows = await _rows(session, agent.cluster_id, name)
        if not rows:
            raise not_found(f"flux configuration '{name}'")
        row = rows[0]
        if report.observedGeneration > row.generation:
            raise bad_request(
                f"observedGeneration {report.observedGeneration} is newer than the configuration's "
                f"generation {row.generation}"
            )
        current = report.observedGeneration == row.generation
        if current:
            row.provisioning_state = report.provisioningState
            row.observed_generation = report.observedGeneration
            row.compliance_state = report.complianceState
            row.error_message = report.errorMessage
        row.statuses = [s.model_dump(exclude_none=True) for s in report.statuses]
        if report.sourceSyncedCommitId is not None:
            row.source_synced_commit_id = report.sourceSyncedCommitId
            row.source_updated_at = report.sourceUpdatedAt or hub.now()
        row.status_updated_at = hub.now()
        await session.commit()
        return JSONResponse(
            {
                "name": name,
                "generation": row.generation,
                "current": current,
                "provisioningState": row.provisioning_state,
                "complianceState": row.compliance_state,
            }
        )


routes = [
    Route(CC + "/{name}/providers/" + KIND, list_configurations, methods=["GET"]),
    Route(
        CC + "/{name}/providers/" + KIND + "/{config}", configuration_item, methods=["GET", "PUT", "DELETE"]
    ),
    Route("/agent/v1/fluxConfigurations", agent_configurations, methods=["GET"]),
    Route("/agent/v1/fluxConfigurations/{name}/status", agent_status, methods=["PUT"]),
]
