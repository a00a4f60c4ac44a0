"""Custom role definitions: validation and storage (built-in roles live in `roles.py`).

A custom role is only as safe as its patterns and scopes, so both are checked
strictly here: malformed action patterns and scopes are refused, a name may not
shadow a built-in role (assignments by name would become ambiguous), and a role
in use can neither be deleted nor narrowed below the scopes it is assigned at.
"""

from __future__ import annotations

import datetime as dt
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hub.errors import ApiError, bad_request
from hub.rbac import scopes
from hub.rbac.assignments import assignments_of
from hub.rbac.engine import role_from_row
from hub.rbac.roles import BUILTIN_BY_ID, BUILTIN_BY_NAME, BUILTIN_ROLES, Role
from hub.resources import scope_key, scope_within
from hub.store.models import RoleDefinition

_ACTION = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9._*\-]*(/[A-Za-z0-9._*\-]+)*$")
MAX_PATTERNS = 2000


def _patterns(values: list[str]) -> list[str]:
    for v in values:
        if len(v) > 512 or not _ACTION.match(v):
            raise ValueError(
                f"{v!r} is not an action pattern (provider/resource/.../operation, letters, digits, "
                "'.', '-', '_' and '*' wildcards)"
            )
    return values


class Permission(BaseModel):
    model_config = ConfigDict(extra="ignore")
    actions: list[str] = Field(default_factory=list, max_length=MAX_PATTERNS)
    notActions: list[str] = Field(default_factory=list, max_length=MAX_PATTERNS)
    dataActions: list[str] = Field(default_factory=list, max_length=MAX_PATTERNS)
    notDataActions: list[str] = Field(default_factory=list, max_length=MAX_PATTERNS)

    _check = field_validator("actions", "notActions", "dataActions", "notDataActions")(_patterns)


class RoleProperties(BaseModel):
    model_config = ConfigDict(extra="ignore")
    roleName: str = Field(min_length=1, max_length=256)
    description: str = Field(default="", max_length=2048)
    permissions: list[Permission] = Field(min_length=1, max_length=1)
    assignableScopes: list[str] = Field(min_length=1, max_length=2000)

    @field_validator("roleName")
    @classmethod
    def _name(cls, v: str) -> str:
        if v != v.strip() or any(c in v for c in "\r\n\t"):
            raise ValueError("must not have leading/trailing spaces or control characters")
        return v


class RoleDefinitionBody(BaseModel):
    """`PUT .../roleDefinitions/{guid}` body, as `az role definition create` sends it."""

    model_config = ConfigDict(extra="ignore")
    properties: RoleProperties


def canonical_scopes(values: list[str]) -> list[str]:
    """Validated assignable scopes, canonical spelling, duplicates dropped (400 on a bad one)."""
    out: dict[str, str] = {}
    for value in values:
        parsed = scopes.parse(value)
        out.setdefault(scope_key(parsed.path), parsed.path)
    return list(out.values())


async def custom_row(session: AsyncSession, role_id: str) -> RoleDefinition | None:
    return await session.get(RoleDefinition, role_id)


async def roles_at(session: AsyncSession, scope: str) -> list[Role]:
    """Built-in roles plus the custom roles assignable at `scope` (every custom role at the root)."""
    key = scope_key(scope)
    rows = (await session.execute(select(RoleDefinition).order_by(RoleDefinition.name))).scalars()
    custom = [role_from_row(r) for r in rows]
    if key != "/":
        custom = [r for r in custom if r.assignable_at(scope)]
    return [*BUILTIN_ROLES, *custom]


async def put_custom_role(
    session: AsyncSession, role_id: str, props: RoleProperties, assignable: list[str], now: dt.datetime
) -> tuple[Role, bool]:
    """Create or replace a custom role and commit; returns (role, created)."""
    if role_id in BUILTIN_BY_ID:
        raise bad_request(
            f"role definition {role_id} is a built-in role and cannot be changed", "BuiltInRole"
        )
    if props.roleName.lower() in BUILTIN_BY_NAME:
        raise ApiError(
            409, "RoleDefinitionWithSameNameExists", f"a built-in role is named {props.roleName!r}"
        )
    clash = (
        await session.execute(
            select(RoleDefinition.id).where(
                func.lower(RoleDefinition.name) == props.roleName.lower(), RoleDefinition.id != role_id
            )
        )
    ).scalar_one_or_none()
    if clash is not None:
        raise ApiError(
            409,
            "RoleDefinitionWithSameNameExists",
            f"custom role {clash} is already named {props.roleName!r}",
        )
    perms = props.permissions[0]
    permissions = {
        "actions": perms.actions,
        "notActions": perms.notActions,
        "dataActions": perms.dataActions,
        "notDataActions": perms.notDataActions,
    }
    row = await custom_row(session, role_id)
    created = row is None
    if row is None:
        row = RoleDefinition(id=role_id, created_at=now)
        session.add(row)
    else:
        keys = [scope_key(s) for s in assignable]
        stranded = [
            a
            for a in await assignments_of(session, role_id)
            if not any(scope_within(a.scope_key, k) for k in keys)
        ]
        if stranded:
            raise ApiError(
                409,
                "RoleDefinitionHasAssignments",
                f"role {props.roleName!r} is assigned at {stranded[0].scope!r}, outside the new assignable "
                "scopes; delete those assignments first",
            )
    row.name = props.roleName
    row.description = props.description
    row.permissions = permissions
    row.assignable_scopes = assignable
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise ApiError(
            409, "RoleDefinitionWithSameNameExists", f"a role named {props.roleName!r} already exists"
        ) from None
    return role_from_row(row), created


async def delete_custom_role(session: AsyncSession, row: RoleDefinition) -> Role:
    """Delete (and commit) an unused custom role; a role still assigned is refused with 409."""
    used = await assignments_of(session, row.id)
    if used:
        raise ApiError(
            409,
            "RoleDefinitionHasAssignments",
            f"role {row.name!r} still has {len(used)} assignment(s) (for example at {used[0].scope!r}); "
            "delete them first",
        )
    role = role_from_row(row)
    await session.delete(row)
    await session.commit()
    return role
