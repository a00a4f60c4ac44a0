"""Directory and role-assignment operations behind `kubearc admin`, on the hub's database.

Each operation takes a session and returns JSON-ready data; `run` opens the
database (migrating it, so bootstrapping works before the hub's first start),
runs one operation and closes everything. It sits above both the directory and
RBAC (assigning a role to a user by UPN needs both), and neither imports it back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from hub import directory
from hub.directory import GROUP, SERVICE_PRINCIPAL, USER, DirectoryError, UnknownPrincipal
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
