"""Role assignments in the store, and finding roles by id or name (used by the API and the admin CLI)."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.errors import InvalidRequest
from hub.rbac.roles import BUILTIN_BY_ID, BUILTIN_BY_NAME, Role, definition_id
from hub.rbac.scopes import child_id
from hub.resources import scope_key
from hub.store.models import RoleAssignment, RoleDefinition

PRINCIPAL_TYPES = ("User", "Group", "ServicePrincipal")


class RbacError(InvalidRequest):
    """A role or assignment request that cannot be honoured; the message says why."""


def canonical_guid(value: str, what: str) -> str:
    """Object ids and assignment names are GUIDs; store them lowercased so lookups compare equal."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise RbacError(f"{what} {value!r} is not a GUID") from None


async def find_role(session: AsyncSession, ref: str) -> Role:
    """A role by GUID, by `/providers/.../roleDefinitions/<guid>` id, or by name."""
    from hub.rbac.engine import role_from_row

    key = ref.rsplit("/", 1)[-1].lower()
    role = BUILTIN_BY_ID.get(key) or BUILTIN_BY_NAME.get(ref.lower())
    if role:
        return role
    row = await session.get(RoleDefinition, key)
    if row is None:
        row = (
            await session.execute(
                select(RoleDefinition).where(func.lower(RoleDefinition.name) == ref.lower())
            )
        ).scalar_one_or_none()
    if row is None:
        raise RbacError(f"role definition {ref!r} does not exist")
    return role_from_row(row)


async def create_assignment(
    session: AsyncSession,
    scope: str,
    role_ref: str,
    principal_id: str,
    principal_type: str = "User",
    now: dt.datetime | None = None,
    assignment_id: str | None = None,
) -> RoleAssignment:
    """Add (and commit) a role assignment; an identical one already present is returned."""
    if principal_type not in PRINCIPAL_TYPES:
        raise RbacError(f"principalType must be one of {', '.join(PRINCIPAL_TYPES)}")
    principal_id = canonical_guid(principal_id, "principalId")
    role = await find_role(session, role_ref)
    key = scope_key(scope)
    existing = (
        await session.execute(
            select(RoleAssignment).where(
                RoleAssignment.scope_key == key,
                RoleAssignment.role_definition_id == role.id,
                RoleAssignment.principal_id == principal_id,
            )
        )
    ).scalar_one_or_none()
    if existing is not None:
        return existing
    row = RoleAssignment(
        id=assignment_id or str(uuid.uuid4()),
        scope=scope if scope.startswith("/") else "/" + scope,
        scope_key=key,
        role_definition_id=role.id,
        principal_id=principal_id,
        principal_type=principal_type,
        created_at=now or dt.datetime.now(dt.UTC),
    )
    session.add(row)
    await session.commit()
    return row


def assignment_to_arm(row: RoleAssignment) -> dict[str, object]:
    """The ARM object of a role assignment (the shape `az role assignment` prints)."""
    created = row.created_at.isoformat().replace("+00:00", "Z")
    return {
        "id": child_id(row.scope, "roleAssignments", row.id),
        "name": row.id,
        "type": "Microsoft.Authorization/roleAssignments",
        "properties": {
            "roleDefinitionId": definition_id(row.role_definition_id, row.scope),
            "principalId": row.principal_id,
            "principalType": row.principal_type,
            "scope": row.scope,
            "condition": None,
            "conditionVersion": None,
            "createdOn": created,
            "updatedOn": created,
        },
    }


def _ancestors(key: str) -> list[str]:
    parts = [p for p in key.split("/") if p]
    return ["/", *("/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1))]


async def list_assignments(
    session: AsyncSession, scope: str, *, at_scope: bool = False, principal_ids: list[str] | None = None
) -> list[RoleAssignment]:
    """Assignments at `scope` and above it, and (unless `at_scope`) below it: ARM's default listing."""
    key = scope_key(scope)
    where: ColumnElement[bool] = RoleAssignment.scope_key.in_(_ancestors(key))
    if not at_scope:
        below = RoleAssignment.scope_key.startswith(key.rstrip("/") + "/", autoescape=True)
        where = or_(where, below)
    query = select(RoleAssignment).where(where)
    if principal_ids is not None:
        query = query.where(RoleAssignment.principal_id.in_([p.lower() for p in principal_ids]))
    rows = (await session.execute(query.order_by(RoleAssignment.scope_key, RoleAssignment.id))).scalars()
    return list(rows)


async def assignments_of(session: AsyncSession, role_id: str) -> list[RoleAssignment]:
    """Assignments that use a role (a role in use cannot be deleted or narrowed)."""
    rows = await session.execute(select(RoleAssignment).where(RoleAssignment.role_definition_id == role_id))
    return list(rows.scalars())
