"""Directory and role-assignment operations behind `kubearc admin`, on the hub's database.

Each operation takes a session and returns JSON-ready data; `run` opens the
database (migrating it, so bootstrapping works before the hub's first start),
runs one operation and closes everything. It sits above both the directory and
RBAC (assigning a role to a user by UPN needs both), and neither imports it back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from hub import directory
from hub.directory import GROUP, SERVICE_PRINCIPAL, USER, DirectoryError, UnknownPrincipal
from hub.errors import InvalidRequest
from hub.rbac.assignments import assignment_to_arm, create_assignment
from hub.store import db
from hub.store.models import DirectoryObject

PRINCIPAL_TYPE_OF = {USER: "User", GROUP: "Group", SERVICE_PRINCIPAL: "ServicePrincipal"}
Operation = Callable[..., Awaitable[Any]]


async def run(database_url: str, operation: Operation, **kwargs: Any) -> Any:
    engine = db.create_engine(database_url)
    try:
        await db.migrate(engine)
        async with db.sessionmaker(engine)() as session:
            return await operation(session, **kwargs)
    finally:
        await engine.dispose()


def describe(obj: DirectoryObject) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": obj.id, "objectType": obj.kind, "displayName": obj.display_name}
    if obj.kind == USER:
        doc["userPrincipalName"] = obj.login
    elif obj.kind == SERVICE_PRINCIPAL:
        doc["appId"] = obj.login
    doc["createdAt"] = obj.created_at.isoformat()
    return doc


async def user_create(session: AsyncSession, upn: str, password: str, display_name: str | None) -> Any:
    return describe(await directory.create_user(session, upn, password, display_name))


async def user_list(session: AsyncSession) -> Any:
    return [describe(u) for u in await directory.list_objects(session, USER)]


async def user_reset_password(session: AsyncSession, user: str, password: str) -> Any:
    return describe(await directory.set_password(session, user, password))


async def delete(session: AsyncSession, ref: str, kind: str) -> Any:
    obj = await directory.resolve(session, ref, (kind,))
    await directory.delete_object(session, obj.id)
    return {"deleted": obj.id}


async def group_create(session: AsyncSession, name: str) -> Any:
    return describe(await directory.create_group(session, name))


async def group_list(session: AsyncSession) -> Any:
    groups = await directory.list_objects(session, GROUP)
    return [{**describe(g), "memberCount": await directory.member_count(session, g.id)} for g in groups]


async def group_add_member(session: AsyncSession, group: str, member: str) -> Any:
    g = await directory.resolve(session, group, (GROUP,))
    m = await directory.resolve(session, member)
    added = await directory.add_member(session, g.id, m.id)
    return {"groupId": g.id, "memberId": m.id, "added": added}


async def group_remove_member(session: AsyncSession, group: str, member: str) -> Any:
    g = await directory.resolve(session, group, (GROUP,))
    m = await directory.resolve(session, member)
    await directory.remove_member(session, g.id, m.id)
    return {"groupId": g.id, "memberId": m.id, "removed": True}


async def group_members(session: AsyncSession, group: str) -> Any:
    g = await directory.resolve(session, group, (GROUP,))
    return [describe(m) for m in await directory.direct_members(session, g.id)]


async def sp_create(session: AsyncSession, name: str) -> Any:
    obj, app_id, secret = await directory.create_service_principal(session, name)
    return {**describe(obj), "objectId": obj.id, "appId": app_id, "secret": secret}


async def sp_list(session: AsyncSession) -> Any:
    return [describe(s) for s in await directory.list_objects(session, SERVICE_PRINCIPAL)]


async def role_assignment_create(
    session: AsyncSession, assignee: str, role: str, scope: str, principal_type: str | None
) -> Any:
    """Assign by object id, UPN, appId or group name; ids outside the directory (Entra) need a type."""
    try:
        obj = await directory.resolve(session, assignee)
        principal_id, kind = obj.id, PRINCIPAL_TYPE_OF[obj.kind]
        if principal_type and principal_type != kind:
            raise DirectoryError(f"{assignee!r} is a {kind}, not a {principal_type}")
    except UnknownPrincipal:
        if not directory.is_guid(assignee) or not principal_type:
            raise DirectoryError(
                f"{assignee!r} is not in the hub's directory; for an Entra object give its object id "
                "and --assignee-principal-type"
            ) from None
        principal_id, kind = assignee.lower(), principal_type
    row = await create_assignment(session, scope, role, principal_id, kind)
    return assignment_to_arm(row)


# ---------------------------------------------------------------- the extension catalogue


async def extension_type_set(
    session: AsyncSession,
    name: str,
    repository: str,
    chart: str,
    versions: list[str],
    release_namespace: str,
    default_values: dict[str, Any],
    ca_cert: str | None,
) -> Any:
    """Create or replace a catalogue entry; `versions` are `1.2.3` (stable) or `1.3.0-rc.1:preview`."""
    from hub import extensionspec
    from hub.store.models import ExtensionType

    name = name.lower()
    if not extensionspec.TYPE_NAME.fullmatch(name):
        raise InvalidRequest(f"extension type {name!r}: lowercase letters, digits, '-' and '.'")
    if not repository.startswith(("https://", "oci://", "http://")):
        raise InvalidRequest(
            f"--repository {repository!r}: an https:// Helm repository or an oci:// registry"
        )
    if not versions:
        raise InvalidRequest("give at least one --version")
    parsed = []
    for text in versions:
        version, _, train = text.partition(":")
        try:
            entry = extensionspec.CatalogueVersion(version=version, releaseTrain=train or "stable")
        except ValueError:
            raise InvalidRequest(
                f"--version {text!r}: a version like 1.2.3, optionally :train (e.g. :preview)"
            ) from None
        parsed.append(entry.model_dump())
    row = await session.get(ExtensionType, name)
    if row is None:
        row = ExtensionType(name=name, created_at=dt.datetime.now(dt.UTC))
        session.add(row)
    row.repository, row.chart, row.versions = repository, chart, parsed
    row.release_namespace, row.default_values, row.ca_cert = release_namespace, default_values, ca_cert
    await session.commit()
    return extensionspec.catalogue_to_json(row)


async def extension_type_list(session: AsyncSession) -> Any:
    from sqlalchemy import select

    from hub import extensionspec
    from hub.store.models import ExtensionType

    rows = (await session.execute(select(ExtensionType).order_by(ExtensionType.name))).scalars().all()
    return [extensionspec.catalogue_to_json(t) for t in rows]


async def extension_type_remove(session: AsyncSession, name: str) -> Any:
    from hub.store.models import ExtensionType

    row = await session.get(ExtensionType, name.lower())
    if row is None:
        raise InvalidRequest(f"no extension type {name!r} in the catalogue")
    await session.delete(row)
    await session.commit()
    return {"removed": name.lower()}
