"""Role assignments and custom role definitions in the store (used by the API and the admin CLI)."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.rbac.roles import BUILTIN_BY_ID, BUILTIN_BY_NAME, Role
from hub.resources import scope_key
from hub.store.models import RoleAssignment, RoleDefinition

PRINCIPAL_TYPES = ("User", "Group", "ServicePrincipal")


class RbacError(ValueError):
    """A role or assignment request that cannot be honoured; the message says why."""


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
            await session.execute(select(RoleDefinition).where(RoleDefinition.name == ref))
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
    try:
        uuid.UUID(principal_id)
    except ValueError:
        raise RbacError(f"principalId {principal_id!r} is not an object id (GUID)") from None
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
