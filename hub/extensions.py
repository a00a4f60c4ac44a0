"""Extensions of a cluster and the catalogue: the users' ARM API and the extension-manager's side.

Users PUT an extension (`extensionType`, version or release train, scope,
settings); each write bumps its generation and it is `Creating`/`Updating` until
the cluster's extension-manager reports that generation done. DELETE marks it
`Deleting` (202): the extension-manager uninstalls the release and reports
`Deleted`, and only then is the resource gone (`?force=true` forgets it at once,
for a cluster that is gone). With `autoUpgradeMinorVersion`, a newer version of
the same major in the catalogue becomes the target when the agent next pulls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub import extensionspec as spec
from hub.auth import current_agent, current_user
from hub.context import Hub, hub_of
from hub.errors import ApiError, bad_request, not_found, read_model
from hub.rbac.access import require
from hub.resources import CC, cluster_child
from hub.store.models import Extension, ExtensionType
from hub.store.queries import find_cluster

KIND = spec.KIND
CATALOGUE_PATH = "/providers/Microsoft.KubernetesConfiguration/extensionTypes"


async def _rows(session: AsyncSession, cluster: int, name: str | None = None) -> Sequence[Extension]:
    query = select(Extension).where(Extension.cluster_id == cluster)
    if name is not None:
        query = query.where(Extension.name == name)
    return (await session.execute(query.order_by(Extension.name))).scalars().all()


def _protected(hub: Hub, row: Extension) -> dict[str, str]:
    return dict(hub.box.open_json(row.protected_settings))


def _arm(hub: Hub, rid: str, row: Extension) -> dict[str, Any]:
    return spec.to_arm(rid, row, sorted(_protected(hub, row)))


def _ids(request: Request) -> tuple[str, str]:
    return cluster_child(request.path_params, "extension")


async def _catalogue(session: AsyncSession, name: str) -> ExtensionType:
    entry = await session.get(ExtensionType, name.lower())
    if entry is None:
        known = (
            (await session.execute(select(ExtensionType.name).order_by(ExtensionType.name))).scalars().all()
        )
        raise bad_request(
            f"extensionType {name!r} is not in the hub's catalogue "
            f"(it has: {', '.join(known) or 'nothing yet'})",
            code="ExtensionTypeNotFound",
        )
    return entry


async def extension_item(request: Request) -> Response:
    hub, principal = hub_of(request), await current_user(request)
    rid, name = _ids(request)
    verb = {"GET": "read", "PUT": "write", "DELETE": "delete"}[request.method]
    await require(hub, principal, f"{KIND}/{verb}", rid)
    if request.method == "PUT":
        if not spec.valid_name(name):
            raise bad_request(f"invalid extension name {name!r}: lowercase letters, digits, '-' and '.'")
        return await _put(hub, rid, name, (await read_model(request, spec.ExtensionBody)).properties)
    async with hub.sessions() as session:
        cluster = await find_cluster(session, rid)
        rows = await _rows(session, cluster.id, name)
        if not rows:
            if request.method == "DELETE":
                return Response(status_code=204)
            raise not_found(f"extension '{name}'")
        row = rows[0]
        if request.method == "GET":
            return JSONResponse(_arm(hub, rid, row))
        if request.query_params.get("force", "").lower() == "true":
            await session.delete(row)
            await session.commit()
            return Response(status_code=200)
        if not row.deleting:
            row.deleting, row.generation = True, row.generation + 1
            row.provisioning_state, row.updated_at = "Deleting", hub.now()
            await session.commit()
        return JSONResponse(_arm(hub, rid, row), status_code=202)


async def _put(hub: Hub, rid: str, name: str, body: spec.ExtensionSpec) -> Response:
    now = hub.now()
    async with hub.sessions() as session:
        cluster = await find_cluster(session, rid)
        catalogue = await _catalogue(session, body.extensionType)
        rows = await _rows(session, cluster.id, name)
        row = rows[0] if rows else None
        desired = body.desired(catalogue)
        if row is not None:
            if row.deleting:
                raise ApiError(
                    409, "Conflict", f"extension '{name}' is being deleted; create it again afterwards"
                )
            for field in ("extensionType", "scope"):
                if row.spec[field] != desired[field]:
                    raise bad_request(f"{field} of an extension cannot change; delete it and create it again")
        try:
            target = spec.target_version(catalogue, desired, row.installed_version if row else None)
            settings = body.protected(_protected(hub, row) if row else {})
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        created = row is None
        if row is None:
            row = Extension(
                cluster_id=cluster.id,
                name=name,
                created_at=now,
                generation=0,
                observed_generation=0,
                statuses=[],
            )
            session.add(row)
        row.spec, row.target_version = desired, target
        row.protected_settings = hub.box.seal_json(settings)
        row.generation += 1
        row.provisioning_state = "Creating" if created else "Updating"
        row.updated_at = now
        await session.commit()
        return JSONResponse(_arm(hub, rid, row), status_code=201 if created else 200)


async def list_extensions(request: Request) -> Response:
    hub, principal = hub_of(request), await current_user(request)
    rid, _ = _ids(request)
    await require(hub, principal, f"{KIND}/read", rid)
    async with hub.sessions() as session:
        cluster = await find_cluster(session, rid)
        rows = await _rows(session, cluster.id)
    return JSONResponse({"value": [_arm(hub, rid, r) for r in rows]})


async def catalogue(request: Request) -> Response:
    """The extension types users may install (any signed-in user may read the catalogue)."""
    hub = hub_of(request)
    await current_user(request)
    name = request.path_params.get("type")
    async with hub.sessions() as session:
        if name:
            entry = await session.get(ExtensionType, name.lower())
            if entry is None:
                raise not_found(f"extension type '{name}'")
            return JSONResponse(spec.catalogue_to_json(entry))
        rows = (await session.execute(select(ExtensionType).order_by(ExtensionType.name))).scalars().all()
    return JSONResponse({"value": [spec.catalogue_to_json(t) for t in rows]})


# ---------------------------------------------------------------- the cluster's extension-manager


async def agent_extensions(request: Request) -> Response:
    """The caller's cluster's extensions with their charts and values, protected settings included."""
    hub, agent = hub_of(request), await current_agent(request)
    assert agent.cluster_id is not None
    value = []
    async with hub.sessions() as session:
        for row in await _rows(session, agent.cluster_id):
            entry = await session.get(ExtensionType, row.spec["extensionType"])
            if entry is None and not row.deleting:
                continue  # its catalogue entry was removed: nothing to install from
            if entry is not None and not row.deleting and row.spec.get("autoUpgradeMinorVersion"):
                try:
                    newest = spec.target_version(entry, row.spec, row.installed_version)
                except ValueError:
                    newest = row.target_version
                if newest != row.target_version:  # the catalogue moved on: upgrade within the major
                    row.target_version, row.generation = newest, row.generation + 1
                    row.provisioning_state, row.updated_at = "Updating", hub.now()
            value.append(spec.to_agent(row, entry, _protected(hub, row)) if entry else _uninstall_only(row))
        await session.commit()
    return JSONResponse({"value": value})


def _uninstall_only(row: Extension) -> dict[str, Any]:
    scope = row.spec["scope"]
    namespace = (
        scope["cluster"]["releaseNamespace"] if "cluster" in scope else scope["namespace"]["targetNamespace"]
    )
    return {"name": row.name, "generation": row.generation, "deleting": True, "releaseNamespace": namespace}


async def agent_status(request: Request) -> Response:
    hub, agent = hub_of(request), await current_agent(request)
    assert agent.cluster_id is not None
    report = await read_model(request, spec.ExtensionStatus)
    name = request.path_params["name"]
    async with hub.sessions() as session:
        rows = await _rows(session, agent.cluster_id, name)
        if not rows:
            raise not_found(f"extension '{name}'")
        row = rows[0]
        if report.observedGeneration > row.generation:
            raise bad_request(
                f"observedGeneration {report.observedGeneration} is newer than generation {row.generation}"
            )
        current = report.observedGeneration == row.generation
        if current and report.provisioningState == "Deleted" and row.deleting:
            await session.delete(row)
            await session.commit()
            return JSONResponse({"name": name, "deleted": True})
        if report.installedVersion is not None:
            row.installed_version = report.installedVersion
        row.statuses = [s.model_dump(exclude_none=True) for s in report.statuses]
        if current and report.provisioningState != "Deleted":
            row.observed_generation = report.observedGeneration
            row.provisioning_state = report.provisioningState
            row.error_code = report.errorInfo.code if report.errorInfo else None
            row.error_message = report.errorInfo.message if report.errorInfo else None
        row.updated_at = hub.now()
        await session.commit()
        return JSONResponse({"name": name, "current": current, "provisioningState": row.provisioning_state})


routes = [
    Route(CC + "/{name}/providers/" + KIND, list_extensions, methods=["GET"]),
    Route(
        CC + "/{name}/providers/" + KIND + "/{extension}", extension_item, methods=["GET", "PUT", "DELETE"]
    ),
    Route(CATALOGUE_PATH, catalogue, methods=["GET"]),
    Route(CATALOGUE_PATH + "/{type}", catalogue, methods=["GET"]),
    Route("/agent/v1/extensions", agent_extensions, methods=["GET"]),
    Route("/agent/v1/extensions/{name}/status", agent_status, methods=["PUT"]),
]
