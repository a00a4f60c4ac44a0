"""Evaluating role assignments: Azure's semantics for actions, wildcards and scopes.

An action is allowed at a scope when some assignment to the caller (its object id
or one of its groups) sits at that scope or any parent scope, and that
assignment's role lists a matching pattern in `actions` (or `dataActions`) and no
matching pattern in `notActions` (or `notDataActions`). Patterns compare
case-insensitively; `*` matches any run of characters, `/` included.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.rbac.roles import BUILTIN_BY_ID, Role
from hub.resources import scope_key, scope_within
from hub.store.models import RoleAssignment, RoleDefinition

_CHUNK = 1000


@lru_cache(maxsize=4096)
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(p) for p in pattern.split("*")), re.IGNORECASE)


def action_matches(pattern: str, action: str) -> bool:
    return _pattern(pattern).fullmatch(action) is not None


def role_permits(role: Role, action: str, data_action: bool) -> bool:
    allow, deny = (
        (role.data_actions, role.not_data_actions) if data_action else (role.actions, role.not_actions)
    )
    return any(action_matches(p, action) for p in allow) and not any(action_matches(p, action) for p in deny)


def role_from_row(row: RoleDefinition) -> Role:
    perms = row.permissions
    return Role(
        id=row.id,
        name=row.name,
        description=row.description,
        actions=tuple(perms.get("actions", [])),
        not_actions=tuple(perms.get("notActions", [])),
        data_actions=tuple(perms.get("dataActions", [])),
        not_data_actions=tuple(perms.get("notDataActions", [])),
        assignable_scopes=tuple(row.assignable_scopes),
        builtin=False,
    )


@dataclass(frozen=True)
class Grant:
    """One role assignment that applies to the caller at the requested scope."""

    assignment_id: str
    scope: str
    role: Role
    principal_id: str = ""
    principal_type: str = "User"
    created_at: dt.datetime | None = None


@dataclass(frozen=True)
class Decision:
    action_id: str
    is_data_action: bool
    allowed: bool
    assignment: Grant | None


async def grants_for(session: AsyncSession, principal_ids: list[str], scope: str) -> list[Grant]:
    """Assignments to any of `principal_ids` at `scope` or above, with their roles.

    Ids compare lowercased (object ids are GUIDs) and are queried in chunks: a user
    in thousands of groups must not overrun the database's bound-parameter limit.
    """
    key = scope_key(scope)
    ids = sorted({p.lower() for p in principal_ids if p})
    rows: list[RoleAssignment] = []
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i : i + _CHUNK]
        found = await session.execute(select(RoleAssignment).where(RoleAssignment.principal_id.in_(chunk)))
        rows.extend(found.scalars())
    applicable = [r for r in rows if scope_within(key, r.scope_key)]
    # Stable, most specific first: the decision names the closest assignment that grants.
    applicable.sort(key=lambda r: (-len(r.scope_key), r.id))
    custom_ids = {r.role_definition_id for r in applicable} - BUILTIN_BY_ID.keys()
    custom: dict[str, Role] = {}
    if custom_ids:
        defs = await session.execute(select(RoleDefinition).where(RoleDefinition.id.in_(custom_ids)))
        custom = {d.id: role_from_row(d) for d in defs.scalars()}
    grants = []
    for r in applicable:
        role = BUILTIN_BY_ID.get(r.role_definition_id) or custom.get(r.role_definition_id)
        if role is not None:
            grants.append(Grant(r.id, r.scope, role, r.principal_id, r.principal_type, r.created_at))
    return grants


def decide(grants: list[Grant], action: str, data_action: bool) -> Decision:
    for grant in grants:
        if role_permits(grant.role, action, data_action):
            return Decision(action, data_action, True, grant)
    return Decision(action, data_action, False, None)


async def check_access(
    session: AsyncSession, principal_ids: list[str], scope: str, actions: list[tuple[str, bool]]
) -> list[Decision]:
    grants = await grants_for(session, principal_ids, scope)
    return [decide(grants, action, data) for action, data in actions]


async def is_allowed(
    session: AsyncSession, principal_ids: list[str], scope: str, action: str, data_action: bool = False
) -> bool:
    return (await check_access(session, principal_ids, scope, [(action, data_action)]))[0].allowed
